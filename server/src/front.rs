//! The front threads: each accepts connections and reads request heads
//! for thousands of connections at once with non-blocking sockets and
//! epoll, answers the request a boot storm is made of on the spot, and
//! hands everything else to a worker thread ([`crate::serve`]) with the
//! bytes already read.
//!
//! The request answered here is a node asking for a published file it
//! already has (`If-None-Match` with the current digest, `304 Not
//! Modified`): after a power cut every node asks this at once, over a new
//! connection. With a thread per connection each of those woke a sleeping
//! thread (a context switch and a cold stack per request), and that, not
//! the answer, was most of the server's time. Here the answer costs one
//! `stat` (the digest comes from the cache of [`crate::serve`], filled by
//! the worker that first opened the file) and one `send`, and a front
//! thread that is busy takes the next connections from the backlog
//! without sleeping.
//!
//! A front thread never blocks: a file to send, a body to read, a TLS
//! handshake, a file whose tag is not cached or an answer that does not
//! fit the socket buffer go to a worker. The deadlines are the workers':
//! the TLS handshake and the head of the first request within
//! `head_timeout` of the accept, the next request's within `idle_timeout`.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::event::{Timespec, epoll};
use rustix::net::{SendFlags, SocketFlags};

use crate::http::{self, RequestHead};
use crate::serve::{Accepted, Job, LocalEtags, MAX_REQUESTS_PER_CONNECTION, Shared, Start, hand_over};

/// The listener's epoll token (connections use slot and serial).
const LISTENER: u64 = u64::MAX;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;
/// Connections accepted per listener event, so that heads already read
/// are answered before the backlog is emptied.
const ACCEPT_BATCH: usize = 64;
/// While the listener is set aside (every slot taken, or out of file
/// descriptors), how often room is looked for.
const RETRY: Duration = Duration::from_millis(50);

/// One front thread's state.
pub(crate) struct Front {
    shared: Arc<Shared>,
    listener: Arc<TcpListener>,
    epoll: OwnedFd,
    /// Whether the listener is in the epoll set.
    listening: bool,
    /// Connections waiting for (the rest of) a head, by slot.
    conns: Vec<Option<Waiting>>,
    free: Vec<usize>,
    serial: u32,
    /// Deadlines of first heads and of idle keep-alive connections, each
    /// queue in deadline order (all of one kind have the same timeout).
    /// An entry whose connection has gone or has a new deadline is stale
    /// and skipped.
    heads: VecDeque<(Instant, u64)>,
    idles: VecDeque<(Instant, u64)>,
    /// Entity tags this thread answered from (see `Shared::cached_etag`).
    etags: LocalEtags,
}

/// A connection a front thread holds.
struct Waiting {
    conn: Accepted,
    /// Bytes read and not yet answered.
    buf: Vec<u8>,
    /// Requests answered on it so far.
    served: usize,
    /// When the head being read must be complete.
    deadline: Instant,
    /// Its epoll token, once registered.
    token: Option<u64>,
    /// The deadline already in a deadline queue: a connection that drips
    /// its head a byte at a time waits many times for one deadline, and
    /// must not add an entry each time.
    queued: Option<Instant>,
}

/// What became of a request head read by a front thread.
enum Answer {
    /// Answered, and the connection stays open for the next request.
    Kept,
    /// Answered; the connection closes.
    Closed,
    /// A worker takes the connection.
    HandOver(Start),
}

impl Front {
    pub(crate) fn new(shared: Arc<Shared>, listener: Arc<TcpListener>) -> io::Result<Front> {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let mut front = Front {
            shared,
            listener,
            epoll: ep,
            listening: false,
            conns: Vec::new(),
            free: Vec::new(),
            serial: 0,
            heads: VecDeque::new(),
            idles: VecDeque::new(),
            etags: LocalEtags::new(),
        };
        front.arm()?;
        Ok(front)
    }

    /// Serves until the process ends.
    pub(crate) fn run(mut self) {
        let mut events = Vec::with_capacity(EVENTS);
        loop {
            let now = Instant::now();
            self.expire(now);
            if !self.listening && self.room() {
                if let Err(e) = self.arm() {
                    log::warn!("listening again: {e}");
                }
            }
            let next = [self.heads.front(), self.idles.front()].into_iter().flatten().map(|(d, _)| *d).min();
            let mut wait = next.map(|d| d.saturating_duration_since(now));
            if !self.listening {
                wait = Some(wait.map_or(RETRY, |w| w.min(RETRY)));
            }
            // Round up, so that a deadline a few microseconds away is not
            // polled for in a busy loop.
            let ts = wait.map(|w| Timespec {
                tv_sec: i64::try_from(w.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(w.subsec_nanos()).max(1_000_000),
            });
            events.clear();
            match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), ts.as_ref()) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    log::error!("epoll_wait: {e}");
                    std::thread::sleep(RETRY);
                    continue;
                }
            }
            for ev in &events {
                match ev.data.u64() {
                    LISTENER => self.accept(),
                    token => self.readable(token),
                }
            }
        }
    }

    fn room(&self) -> bool {
        self.shared.open.load(Ordering::Acquire) < self.shared.cfg.max_connections.max(1)
    }

    /// Puts the listener in the epoll set; `EPOLLEXCLUSIVE` wakes one front
    /// thread per new connection instead of all.
    fn arm(&mut self) -> io::Result<()> {
        let flags = epoll::EventFlags::IN | epoll::EventFlags::EXCLUSIVE;
        epoll::add(&self.epoll, &*self.listener, epoll::EventData::new_u64(LISTENER), flags)?;
        self.listening = true;
        Ok(())
    }

    /// Sets the listener aside: new clients wait in the backlog.
    fn disarm(&mut self) {
        if self.listening {
            let _ = epoll::delete(&self.epoll, &*self.listener);
            self.listening = false;
        }
    }

    fn accept(&mut self) {
        if !self.listening {
            // An event taken before the listener was set aside.
            return;
        }
        let max = self.shared.cfg.max_connections.max(1);
        for _ in 0..ACCEPT_BATCH {
            if self.shared.open.fetch_add(1, Ordering::AcqRel) >= max {
                self.shared.open.fetch_sub(1, Ordering::AcqRel);
                // Every slot is taken and a client waits: idle keep-alive
                // connections give theirs up (here at once, on the workers
                // within a second), as nginx does.
                self.shared.waiting.store(true, Ordering::Release);
                if !self.drop_idle() {
                    self.disarm();
                    return;
                }
                continue;
            }
            match rustix::net::acceptfrom_with(&*self.listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
                Ok((fd, addr)) => {
                    if self.shared.waiting.load(Ordering::Relaxed) {
                        self.shared.waiting.store(false, Ordering::Release);
                    }
                    let stream = TcpStream::from(fd);
                    let Some(peer) = addr.and_then(|a| SocketAddr::try_from(a).ok()) else {
                        self.shared.open.fetch_sub(1, Ordering::AcqRel);
                        continue;
                    };
                    if let Some(conn) = Accepted::new(&self.shared, stream, peer) {
                        self.start(conn);
                    }
                }
                Err(e) => {
                    self.shared.open.fetch_sub(1, Ordering::AcqRel);
                    match e {
                        rustix::io::Errno::AGAIN => return,
                        rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED => {}
                        e => {
                            // Out of file descriptors: give connections
                            // time to end.
                            log::warn!("accept: {e}");
                            self.disarm();
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Closes this thread's idle keep-alive connections (no part of a
    /// request read); whether there were any.
    fn drop_idle(&mut self) -> bool {
        let mut any = false;
        for (i, slot) in self.conns.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|w| w.served > 0 && w.buf.is_empty()) {
                *slot = None;
                self.free.push(i);
                any = true;
            }
        }
        any
    }

    fn start(&mut self, conn: Accepted) {
        let w = Waiting {
            conn,
            buf: Vec::new(),
            served: 0,
            deadline: Instant::now() + self.shared.cfg.head_timeout,
            token: None,
            queued: None,
        };
        if self.shared.cfg.tls.is_some() {
            // The handshake is a worker's; hand over once the client has
            // sent something, so that silent connections hold no thread.
            self.wait(w);
        } else {
            self.progress(w);
        }
    }

    /// An event on a connection.
    fn readable(&mut self, token: u64) {
        let Some(w) = self.take(token) else { return };
        if self.shared.cfg.tls.is_some() {
            self.hand_over(w, Start::Serve);
        } else {
            self.progress(w);
        }
    }

    /// Reads and answers what it can on a plain connection; keeps it
    /// (waiting for more), closes it or hands it to a worker.
    fn progress(&mut self, mut w: Waiting) {
        let mut chunk = [0u8; 4096];
        loop {
            match http::parse_head(&w.buf) {
                Ok(Some((head, n))) => match self.answer(&mut w, &head, n) {
                    Answer::Kept => continue,
                    Answer::Closed => return self.close(w),
                    Answer::HandOver(start) => return self.hand_over(w, start),
                },
                Ok(None) => {}
                // The worker answers it (and drains what follows).
                Err(_) => return self.hand_over(w, Start::Serve),
            }
            match (&w.conn.stream).read(&mut chunk) {
                // The client closed: between requests, or with part of a
                // head sent (nothing can be answered).
                Ok(0) => return self.close(w),
                Ok(n) => w.buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.wait(w),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("{}: {e}", w.conn.peer);
                    return self.close(w);
                }
            }
        }
    }

    /// Answers a request with a cached `304` when that is the answer,
    /// exactly as a worker would (see `serve::handle`); anything else is
    /// handed over with the head still in the buffer.
    fn answer(&mut self, w: &mut Waiting, head: &RequestHead, len: usize) -> Answer {
        let shared = &self.shared;
        if !(head.method == "GET" || head.method == "HEAD") || head.content_length > 0 {
            return Answer::HandOver(Start::Serve);
        }
        let Some(inm) = head.header("if-none-match") else { return Answer::HandOver(Start::Serve) };
        let Some((rel, node)) = crate::serve::public_file(&head.path) else { return Answer::HandOver(Start::Serve) };
        let Some((tag, modified)) = shared.cached_etag(&rel, &mut self.etags) else {
            return Answer::HandOver(Start::Serve);
        };
        if !http::none_match(inm, &tag) {
            return Answer::HandOver(Start::Serve);
        }
        if let Some(node) = node {
            shared.seen.saw(&node, &w.conn.peer.ip().to_string());
        }
        let keep = w.served + 1 < MAX_REQUESTS_PER_CONNECTION && head.keep_alive();
        let extra = format!("Last-Modified: {}\r\nETag: {tag}\r\n", http::http_date(modified));
        let text = crate::serve::head_text(304, None, &extra, keep);
        w.buf.drain(..len);
        w.served += 1;
        shared.metrics.request(crate::metrics::kind(&head.method, &head.path), 304);
        let bytes = text.as_bytes();
        let sent = loop {
            match rustix::net::send(&w.conn.stream, bytes, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                Ok(n) => break n,
                Err(rustix::io::Errno::AGAIN) => break 0,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    log::debug!("{}: {e}", w.conn.peer);
                    return Answer::Closed;
                }
            }
        };
        shared.metrics.sent(sent as u64);
        if sent < bytes.len() {
            let rest = bytes.get(sent..).unwrap_or_default().to_vec();
            return Answer::HandOver(Start::Finish(rest, keep));
        }
        if !keep {
            // Closing with unread input would reset the connection before
            // the client read the answer: a worker drains it first.
            return if w.buf.is_empty() { Answer::Closed } else { Answer::HandOver(Start::Finish(Vec::new(), false)) };
        }
        w.deadline = Instant::now() + shared.cfg.idle_timeout;
        Answer::Kept
    }

    /// Keeps a connection until it is readable or its deadline passes.
    fn wait(&mut self, mut w: Waiting) {
        let token = match w.token {
            Some(t) => t,
            None => {
                let slot = self.free.pop().unwrap_or_else(|| {
                    self.conns.push(None);
                    self.conns.len() - 1
                });
                self.serial = self.serial.wrapping_add(1);
                let token = (u64::from(self.serial) << 32) | slot as u64;
                if let Err(e) =
                    epoll::add(&self.epoll, &w.conn.stream, epoll::EventData::new_u64(token), epoll::EventFlags::IN)
                {
                    log::warn!("{}: epoll_ctl: {e}", w.conn.peer);
                    self.free.push(slot);
                    return;
                }
                w.token = Some(token);
                token
            }
        };
        if w.queued != Some(w.deadline) {
            let queue = if w.served == 0 { &mut self.heads } else { &mut self.idles };
            queue.push_back((w.deadline, token));
            w.queued = Some(w.deadline);
        }
        if let Some(slot) = self.conns.get_mut(slot_of(token)) {
            *slot = Some(w);
        }
    }

    /// Takes the connection of `token` out of its slot (kept registered).
    fn take(&mut self, token: u64) -> Option<Waiting> {
        let slot = self.conns.get_mut(slot_of(token))?;
        if slot.as_ref().is_none_or(|w| w.token != Some(token)) {
            return None;
        }
        // The slot is given back when the connection leaves this thread
        // (`close`, `hand_over`); until then `wait` puts it back in the
        // same one.
        slot.take()
    }

    /// Closes a connection this thread holds (closing the socket also
    /// takes it out of the epoll set).
    fn close(&mut self, w: Waiting) {
        if let Some(t) = w.token {
            self.free.push(slot_of(t));
        }
    }

    /// Gives a connection to a worker.
    fn hand_over(&mut self, w: Waiting, start: Start) {
        let Waiting { conn, buf, served, deadline, token, .. } = w;
        if let Some(t) = token {
            let _ = epoll::delete(&self.epoll, &conn.stream);
            self.free.push(slot_of(t));
        }
        hand_over(&self.shared, Job { conn, buf, served, deadline, start });
    }

    /// Ends the connections whose deadline has passed: with part of a head
    /// read, a worker answers 408; otherwise they are closed.
    fn expire(&mut self, now: Instant) {
        for idle in [false, true] {
            loop {
                let queue = if idle { &mut self.idles } else { &mut self.heads };
                let Some(&(deadline, token)) = queue.front() else { break };
                if deadline > now {
                    break;
                }
                queue.pop_front();
                let current = self
                    .conns
                    .get(slot_of(token))
                    .and_then(Option::as_ref)
                    .is_some_and(|w| w.token == Some(token) && w.deadline == deadline);
                if !current {
                    continue;
                }
                let Some(w) = self.take(token) else { continue };
                if self.shared.cfg.tls.is_none() && !w.buf.is_empty() {
                    self.hand_over(w, Start::HeadTimedOut);
                } else {
                    self.close(w);
                }
            }
        }
    }
}

fn slot_of(token: u64) -> usize {
    (token & 0xffff_ffff) as usize
}
