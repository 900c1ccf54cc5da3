//! A small synchronous DNS client for SRV and address lookups.
//!
//! The initramfs has no NSS and glibc's resolver is not usable from a static
//! binary, so the loader asks the name servers itself: one UDP query per
//! server with a short timeout, TCP when the answer is truncated, messages
//! built and parsed by `hickory-proto`. Name servers come from
//! `rd.stateless.dns=` or `/etc/resolv.conf` (written by dracut's DHCP hook),
//! as does the search domain used for SRV discovery.
//!
//! Every exchange ends by the caller's deadline (the loader's time budget),
//! whatever the servers do: each read and write waits at most the time left,
//! so a server dripping a TCP answer a byte at a time cannot hold the boot.
//! Answers are checked before they are believed: a datagram from another
//! address or port, or with another id, is dropped before it is decoded and
//! does not extend the wait; an answer must be a response to our one
//! question; and only records whose owner is the name asked for (or the
//! end of a CNAME chain from it) are used.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::srv::SrvRecord;

/// Longest wait for one answer from one server.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest UDP answer accepted (EDNS is not used, so 512 is the norm).
const MAX_UDP: usize = 4096;
/// Largest TCP answer accepted.
const MAX_TCP: usize = 65_535;

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// No name server is configured.
    #[error("no name server (no rd.stateless.dns= and none in resolv.conf)")]
    NoServers,
    /// The name is not valid.
    #[error("bad name {0}")]
    BadName(String),
    /// The name does not exist.
    #[error("{0}: no such name")]
    NoSuchName(String),
    /// The servers answered with an error.
    #[error("{name}: server answered {code}")]
    ServerError {
        /// The name looked up.
        name: String,
        /// The response code.
        code: String,
    },
    /// No server answered in time.
    #[error("{name}: no answer from {servers}")]
    NoAnswer {
        /// The name looked up.
        name: String,
        /// The servers tried.
        servers: String,
    },
    /// An answer could not be parsed or did not match the question.
    #[error("malformed answer: {0}")]
    Malformed(String),
}

/// Name servers and search domain, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// Name servers, in order.
    pub servers: Vec<SocketAddr>,
    /// The first `search` (or `domain`) entry.
    pub search: Option<String>,
}

impl ResolvConf {
    /// Parses `/etc/resolv.conf` text (`nameserver`, `search`, `domain`).
    pub fn parse(text: &str) -> ResolvConf {
        let mut rc = ResolvConf::default();
        let mut domain = None;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(ip)) => {
                    // Link-local IPv6 servers carry a zone (`fe80::1%eth0`) that
                    // SocketAddr cannot hold; skip them.
                    if let Ok(ip) = ip.parse::<IpAddr>() {
                        rc.servers.push(SocketAddr::new(ip, 53));
                    }
                }
                (Some("search"), Some(d)) if rc.search.is_none() => {
                    rc.search = Some(d.trim_end_matches('.').to_owned())
                }
                (Some("domain"), Some(d)) => domain = Some(d.trim_end_matches('.').to_owned()),
                _ => {}
            }
        }
        if rc.search.is_none() {
            rc.search = domain;
        }
        rc
    }
}

/// The answer to an SRV query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SrvAnswer {
    /// The SRV records.
    pub records: Vec<SrvRecord>,
    /// Addresses from the additional section, by target name (no trailing dot).
    pub addresses: Vec<(String, IpAddr)>,
}

/// Asks the configured servers, in order, until one answers.
#[derive(Debug, Clone)]
pub struct Resolver {
    servers: Vec<SocketAddr>,
}

impl Resolver {
    /// A resolver asking `servers` in order.
    pub fn new(servers: Vec<SocketAddr>) -> Resolver {
        Resolver { servers }
    }

    /// Looks up SRV records for `name` (e.g. `_stateless._tcp.lab.example`).
    pub fn srv(&self, name: &str, deadline: Instant) -> Result<SrvAnswer, DnsError> {
        let (msg, fqdn) = self.query(name, RecordType::SRV, deadline)?;
        Ok(srv_answer(&msg, &fqdn))
    }

    /// Looks up the IPv4 and IPv6 addresses of `host`. An IP literal is
    /// returned as it is.
    pub fn lookup_ip(&self, host: &str, deadline: Instant) -> Result<Vec<IpAddr>, DnsError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let mut out = Vec::new();
        let mut first_err = None;
        for rtype in [RecordType::A, RecordType::AAAA] {
            match self.query(host, rtype, deadline) {
                Ok((msg, fqdn)) => out.extend(addresses(&msg, &fqdn, rtype)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
            // Most labs are IPv4 only: do not spend the budget on AAAA.
            if !out.is_empty() {
                break;
            }
        }
        match (out.is_empty(), first_err) {
            (false, _) => Ok(out),
            (true, Some(e)) => Err(e),
            (true, None) => Err(DnsError::NoSuchName(host.to_owned())),
        }
    }

    /// Asks each server in turn; returns the answer and the name asked.
    fn query(&self, name: &str, rtype: RecordType, deadline: Instant) -> Result<(Message, Name), DnsError> {
        if self.servers.is_empty() {
            return Err(DnsError::NoServers);
        }
        let fqdn = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
            .map_err(|_| DnsError::BadName(name.to_owned()))?;
        let mut last = None;
        for server in &self.servers {
            if Instant::now() >= deadline {
                break;
            }
            match exchange(*server, &fqdn, rtype, deadline) {
                Ok(msg) => match msg.metadata.response_code {
                    ResponseCode::NoError => return Ok((msg, fqdn)),
                    ResponseCode::NXDomain => return Err(DnsError::NoSuchName(name.to_owned())),
                    // SERVFAIL or REFUSED from one server: try the next.
                    code => last = Some(DnsError::ServerError { name: name.to_owned(), code: code.to_string() }),
                },
                Err(e) => {
                    log::debug!("dns {server}: {name} {rtype}: {e}");
                    if matches!(e, DnsError::Malformed(_)) {
                        last = Some(e);
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| DnsError::NoAnswer {
            name: name.to_owned(),
            servers: self.servers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        }))
    }
}

fn new_id() -> u16 {
    let mut b = [0u8; 2];
    // A predictable id only weakens spoofing resistance; keep going.
    let _ = getrandom::fill(&mut b);
    u16::from_be_bytes(b)
}

/// One question to one server: UDP, then TCP when the answer is truncated.
/// Each transport gets at most [`QUERY_TIMEOUT`], and everything ends by
/// `deadline`.
fn exchange(server: SocketAddr, name: &Name, rtype: RecordType, deadline: Instant) -> Result<Message, DnsError> {
    let id = new_id();
    let mut q = Message::new(id, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(name.clone(), rtype));
    let wire = q.to_vec().map_err(|e| DnsError::Malformed(e.to_string()))?;
    let net = |e: io::Error| DnsError::NoAnswer { name: name.to_ascii(), servers: format!("{server} ({e})") };

    let until = deadline.min(Instant::now() + QUERY_TIMEOUT);
    let bind: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let sock = UdpSocket::bind(bind).map_err(net)?;
    // Connected: the kernel drops datagrams from other addresses; the
    // source is checked again below all the same.
    sock.connect(server).map_err(net)?;
    sock.send(&wire).map_err(net)?;
    let mut buf = vec![0u8; MAX_UDP];
    // A bad answer with our id is remembered, not believed: an off-path
    // spoofer who hits the port and id must not end the lookup.
    let mut bad = None;
    loop {
        let Some(left) = time_left(until) else {
            return Err(bad.map_or_else(|| net(io::ErrorKind::TimedOut.into()), DnsError::Malformed));
        };
        sock.set_read_timeout(Some(left)).map_err(net)?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(net(e)),
        };
        let packet = buf.get(..n).unwrap_or_default();
        if from != server || !id_matches(packet, id) {
            continue;
        }
        match parse_answer(packet, id, name, rtype) {
            Ok(msg) if msg.metadata.truncation => break,
            Ok(msg) => return Ok(msg),
            Err(AnswerError::WrongId) => {}
            Err(AnswerError::Bad(e)) => bad = Some(e),
        }
    }
    let until = deadline.min(Instant::now() + QUERY_TIMEOUT);
    let left = time_left(until).ok_or_else(|| net(io::ErrorKind::TimedOut.into()))?;
    let mut tcp = TcpStream::connect_timeout(&server, left).map_err(net)?;
    let len = u16::try_from(wire.len()).map_err(|_| DnsError::Malformed("query too long".into()))?;
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend_from_slice(&wire);
    write_all_by(&mut tcp, &frame, until).map_err(net)?;
    let mut lenb = [0u8; 2];
    read_exact_by(&mut tcp, &mut lenb, until).map_err(net)?;
    let n = usize::from(u16::from_be_bytes(lenb)).min(MAX_TCP);
    let mut body = vec![0u8; n];
    read_exact_by(&mut tcp, &mut body, until).map_err(net)?;
    parse_answer(&body, id, name, rtype).map_err(|e| match e {
        AnswerError::WrongId => DnsError::Malformed("answer id mismatch".into()),
        AnswerError::Bad(e) => DnsError::Malformed(e),
    })
}

/// The time left until `until`, or `None` when it has passed.
fn time_left(until: Instant) -> Option<Duration> {
    Some(until.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

/// `read_exact` where the whole read, not each byte, ends by `until`.
fn read_exact_by(s: &mut TcpStream, mut buf: &mut [u8], until: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        let left = time_left(until).ok_or(io::ErrorKind::TimedOut)?;
        s.set_read_timeout(Some(left))?;
        match s.read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = buf.get_mut(n..).unwrap_or_default(),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `write_all` where the whole write ends by `until`.
fn write_all_by(s: &mut TcpStream, mut buf: &[u8], until: Instant) -> io::Result<()> {
    while !buf.is_empty() {
        let left = time_left(until).ok_or(io::ErrorKind::TimedOut)?;
        s.set_write_timeout(Some(left))?;
        match s.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether a packet carries `id`, read from its first two bytes without
/// decoding anything else.
fn id_matches(packet: &[u8], id: u16) -> bool {
    packet.get(..2) == Some(&id.to_be_bytes()[..])
}

/// Why an answer was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum AnswerError {
    /// The id differs from the query's.
    WrongId,
    /// Undecodable, not a response, or for another question.
    Bad(String),
}

/// Decodes an answer and checks it answers our question; the id is checked
/// before anything is decoded. Untrusted input: the `dns_answer` fuzz target
/// (fuzz/fuzz_targets/dns_answer.rs) runs this with [`srv_answer`] and
/// [`addresses`].
pub fn parse_answer(bytes: &[u8], id: u16, name: &Name, rtype: RecordType) -> Result<Message, AnswerError> {
    if !id_matches(bytes, id) {
        return Err(AnswerError::WrongId);
    }
    let msg = Message::from_vec(bytes).map_err(|e| AnswerError::Bad(e.to_string()))?;
    if msg.metadata.message_type != MessageType::Response {
        return Err(AnswerError::Bad("not a response".into()));
    }
    match msg.queries.as_slice() {
        [q] if q.query_type() == rtype && q.name().eq_case(name) => Ok(msg),
        // Some servers omit the question in error answers.
        [] if msg.metadata.response_code != ResponseCode::NoError => Ok(msg),
        _ => Err(AnswerError::Bad("answer is for another question".into())),
    }
}

fn bare(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_owned()
}

/// Longest CNAME chain followed inside one answer.
const MAX_CNAMES: usize = 8;

/// The names whose records answer a question for `qname`: `qname` and the
/// CNAME chain from it inside the answer section.
fn owners(msg: &Message, qname: &Name) -> Vec<Name> {
    let mut chain = vec![qname.clone()];
    while chain.len() <= MAX_CNAMES {
        let Some(last) = chain.last() else { break };
        let next = msg.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if r.name == *last => Some(c.0.clone()),
            _ => None,
        });
        match next {
            Some(n) if !chain.contains(&n) => chain.push(n),
            _ => break,
        }
    }
    chain
}

/// SRV records for `qname` and glue addresses for their targets from an
/// answer. Records owned by other names are ignored.
pub fn srv_answer(msg: &Message, qname: &Name) -> SrvAnswer {
    let names = owners(msg, qname);
    let mut targets = Vec::new();
    let records = msg
        .answers
        .iter()
        .filter(|r| names.contains(&r.name))
        .filter_map(|r| match &r.data {
            RData::SRV(s) => {
                targets.push(s.target.clone());
                let target = if s.target.is_root() { ".".to_owned() } else { bare(&s.target) };
                Some(SrvRecord { priority: s.priority, weight: s.weight, port: s.port, target })
            }
            _ => None,
        })
        .collect();
    let addresses = msg
        .additionals
        .iter()
        .filter(|r| targets.contains(&r.name))
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((bare(&r.name), IpAddr::V4(a.0))),
            RData::AAAA(a) => Some((bare(&r.name), IpAddr::V6(a.0))),
            _ => None,
        })
        .collect();
    SrvAnswer { records, addresses }
}

/// The addresses of type `rtype` (A or AAAA) for `qname` in an answer.
/// Records owned by other names are ignored.
pub fn addresses(msg: &Message, qname: &Name, rtype: RecordType) -> Vec<IpAddr> {
    let names = owners(msg, qname);
    msg.answers
        .iter()
        .filter(|r| names.contains(&r.name))
        .filter_map(|r| match (&r.data, rtype) {
            (RData::A(a), RecordType::A) => Some(IpAddr::V4(a.0)),
            (RData::AAAA(a), RecordType::AAAA) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, CNAME, SRV};
    use std::net::TcpListener;
    use std::thread;

    #[test]
    fn resolv_conf() {
        let rc = ResolvConf::parse(
            "# dhcp\nnameserver 10.0.2.3\nnameserver fe80::1%eth0\nnameserver ::1\nsearch lab.example. other\n",
        );
        assert_eq!(rc.servers, vec!["10.0.2.3:53".parse().unwrap(), "[::1]:53".parse().unwrap()]);
        assert_eq!(rc.search.as_deref(), Some("lab.example"));
        assert_eq!(ResolvConf::parse("domain corp.example\n").search.as_deref(), Some("corp.example"));
        assert_eq!(ResolvConf::parse(""), ResolvConf::default());
    }

    fn answer(id: u16, name: &Name) -> Message {
        let mut m = Message::new(id, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(name.clone(), RecordType::SRV));
        let t = Name::from_ascii("a.lab.example.").unwrap();
        m.answers.push(Record::from_rdata(name.clone(), 60, RData::SRV(SRV::new(10, 5, 8443, t.clone()))));
        m.answers.push(Record::from_rdata(name.clone(), 60, RData::SRV(SRV::new(20, 0, 8443, Name::root()))));
        m.additionals.push(Record::from_rdata(t, 60, RData::A(A::new(10, 0, 2, 2))));
        m
    }

    #[test]
    fn srv_answers_are_checked_and_read() {
        let name = Name::from_ascii("_stateless._tcp.lab.example.").unwrap();
        let bytes = answer(7, &name).to_vec().unwrap();
        let msg = parse_answer(&bytes, 7, &name, RecordType::SRV).unwrap();
        let a = srv_answer(&msg, &name);
        assert_eq!(a.records.len(), 2);
        assert_eq!(a.records[0], SrvRecord { priority: 10, weight: 5, port: 8443, target: "a.lab.example".into() });
        assert_eq!(a.records[1].target, ".");
        assert_eq!(a.addresses, vec![("a.lab.example".to_owned(), "10.0.2.2".parse().unwrap())]);
        assert_eq!(parse_answer(&bytes, 8, &name, RecordType::SRV).unwrap_err(), AnswerError::WrongId);
        let other = Name::from_ascii("_x._tcp.lab.example.").unwrap();
        assert!(parse_answer(&bytes, 7, &other, RecordType::SRV).is_err());
        assert!(parse_answer(&bytes, 7, &name, RecordType::A).is_err());
        assert!(parse_answer(&bytes[..bytes.len() - 3], 7, &name, RecordType::SRV).is_err());
        assert!(parse_answer(&[], 7, &name, RecordType::SRV).is_err());
    }

    #[test]
    fn silent_server_times_out_within_the_deadline() {
        // A bound UDP socket that never answers.
        let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = Resolver::new(vec![quiet.local_addr().unwrap()]);
        let deadline = Instant::now() + Duration::from_millis(300);
        let err = r.srv("_stateless._tcp.lab.example", deadline).unwrap_err();
        assert!(matches!(err, DnsError::NoAnswer { .. }), "{err}");
        assert!(Instant::now() < deadline + Duration::from_secs(1));
        assert_eq!(r.lookup_ip("10.1.2.3", deadline).unwrap(), vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.lookup_ip("[::1]", deadline).unwrap(), vec!["::1".parse::<IpAddr>().unwrap()]);
    }

    fn srv_name() -> Name {
        Name::from_ascii("_stateless._tcp.lab.example.").unwrap()
    }

    /// A name server on 127.0.0.1 that answers every query through
    /// `answer(query, udp_socket, peer)`; returns its address.
    fn udp_server(answer: impl Fn(&Message, &UdpSocket, SocketAddr) + Send + 'static) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                if let Ok(q) = Message::from_vec(&buf[..n]) {
                    answer(&q, &sock, peer);
                }
            }
        });
        addr
    }

    fn reply_to(q: &Message) -> Message {
        let mut m = answer(q.metadata.id, q.queries[0].name());
        m.queries.clone_from(&q.queries);
        m
    }

    #[test]
    fn tcp_answer_dripped_a_byte_at_a_time_ends_by_the_deadline() {
        // UDP says "truncated"; TCP sends a length of 65535 and then one
        // byte every 100 ms, for ever.
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        thread::spawn(move || {
            for conn in tcp.incoming() {
                let Ok(mut conn) = conn else { return };
                thread::spawn(move || {
                    let mut head = [0u8; 512];
                    let _ = conn.read(&mut head);
                    for _ in 0..600 {
                        if conn.write_all(&[0xff]).is_err() {
                            return;
                        }
                        thread::sleep(Duration::from_millis(100));
                    }
                });
            }
        });
        let sock = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut m = reply_to(&q);
                m.metadata.truncation = true;
                sock.send_to(&m.to_vec().unwrap(), peer).unwrap();
            }
        });
        let r = Resolver::new(vec![SocketAddr::from(([127, 0, 0, 1], port))]);
        for budget in [Duration::from_millis(800), Duration::from_secs(30)] {
            let t = Instant::now();
            let err = r.srv("_stateless._tcp.lab.example", t + budget).unwrap_err();
            let took = t.elapsed();
            // Never past the deadline, and never past one query timeout
            // per transport whatever the deadline.
            assert!(took < budget.min(2 * QUERY_TIMEOUT) + Duration::from_millis(300), "took {took:?}: {err}");
            assert!(matches!(err, DnsError::NoAnswer { .. }), "{err}");
        }
    }

    #[test]
    fn wrong_ids_are_dropped_and_do_not_extend_the_wait() {
        // A server that sends a stream of wrong-id answers and never the
        // right one: the wait still ends at the query timeout.
        let flood = udp_server(|q, sock, peer| {
            let mut m = reply_to(q);
            for i in 1..=40u16 {
                m.metadata.id = q.metadata.id.wrapping_add(i);
                let _ = sock.send_to(&m.to_vec().unwrap(), peer);
                thread::sleep(Duration::from_millis(100));
            }
        });
        let t = Instant::now();
        let err =
            Resolver::new(vec![flood]).srv("_stateless._tcp.lab.example", t + Duration::from_secs(30)).unwrap_err();
        assert!(t.elapsed() < QUERY_TIMEOUT + Duration::from_millis(300), "took {:?}", t.elapsed());
        assert!(matches!(err, DnsError::NoAnswer { .. }), "{err}");

        // Wrong ids, then garbage with the right id, then the answer: the
        // answer is taken.
        let noisy = udp_server(|q, sock, peer| {
            let mut wrong = reply_to(q);
            wrong.metadata.id = q.metadata.id ^ 0x5a5a;
            sock.send_to(&wrong.to_vec().unwrap(), peer).unwrap();
            let mut garbage = q.metadata.id.to_be_bytes().to_vec();
            garbage.extend_from_slice(&[0xff; 9]);
            sock.send_to(&garbage, peer).unwrap();
            sock.send_to(&reply_to(q).to_vec().unwrap(), peer).unwrap();
        });
        let a = Resolver::new(vec![noisy])
            .srv("_stateless._tcp.lab.example", Instant::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(a.records.len(), 2);

        // Only garbage with the right id: malformed, by the query timeout.
        let bad = udp_server(|q, sock, peer| {
            let mut garbage = q.metadata.id.to_be_bytes().to_vec();
            garbage.extend_from_slice(&[0xff; 9]);
            sock.send_to(&garbage, peer).unwrap();
        });
        let t = Instant::now();
        let err = Resolver::new(vec![bad]).srv("_stateless._tcp.lab.example", t + Duration::from_secs(30)).unwrap_err();
        assert!(matches!(err, DnsError::Malformed(_)), "{err}");
        assert!(t.elapsed() < QUERY_TIMEOUT + Duration::from_millis(300));
    }

    #[test]
    fn the_id_is_checked_before_decoding() {
        let name = srv_name();
        assert_eq!(parse_answer(&[], 7, &name, RecordType::SRV).unwrap_err(), AnswerError::WrongId);
        assert_eq!(parse_answer(&[0], 7, &name, RecordType::SRV).unwrap_err(), AnswerError::WrongId);
        // Undecodable, but the id differs: a wrong id, not a bad answer.
        assert_eq!(parse_answer(&[0, 8, 0xff], 7, &name, RecordType::SRV).unwrap_err(), AnswerError::WrongId);
        assert!(matches!(parse_answer(&[0, 7, 0xff], 7, &name, RecordType::SRV), Err(AnswerError::Bad(_))));
        // Two questions are not an answer to our one.
        let mut m = answer(7, &name);
        m.add_query(Query::query(Name::from_ascii("other.example.").unwrap(), RecordType::SRV));
        assert!(matches!(parse_answer(&m.to_vec().unwrap(), 7, &name, RecordType::SRV), Err(AnswerError::Bad(_))));
        // A query is not an answer.
        let mut q = answer(7, &name);
        q.metadata.message_type = MessageType::Query;
        assert!(matches!(parse_answer(&q.to_vec().unwrap(), 7, &name, RecordType::SRV), Err(AnswerError::Bad(_))));
    }

    #[test]
    fn records_of_other_owners_are_ignored() {
        let name = srv_name();
        let mut m = answer(7, &name);
        let evil = Name::from_ascii("evil.example.").unwrap();
        let elsewhere = Name::from_ascii("_stateless._tcp.evil.example.").unwrap();
        m.answers.push(Record::from_rdata(elsewhere, 60, RData::SRV(SRV::new(0, 0, 1, evil.clone()))));
        // Glue for a name no SRV record names.
        m.additionals.push(Record::from_rdata(evil, 60, RData::A(A::new(6, 6, 6, 6))));
        let a = srv_answer(&m, &name);
        assert_eq!(a.records.len(), 2, "{a:?}");
        assert!(a.records.iter().all(|r| r.target != "evil.example"), "{a:?}");
        assert_eq!(a.addresses, vec![("a.lab.example".to_owned(), "10.0.2.2".parse().unwrap())]);
        // Owner names compare without case, as DNS does.
        let upper = Name::from_ascii("_STATELESS._tcp.LAB.example.").unwrap();
        assert_eq!(srv_answer(&m, &upper).records.len(), 2);

        // Addresses: the name's own, or at the end of its CNAME chain; not
        // another name's, and not the other family's.
        let host = Name::from_ascii("cfg.lab.example.").unwrap();
        let alias = Name::from_ascii("real.lab.example.").unwrap();
        let mut m = Message::new(9, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(host.clone(), RecordType::A));
        m.answers.push(Record::from_rdata(host.clone(), 60, RData::CNAME(CNAME(alias.clone()))));
        m.answers.push(Record::from_rdata(alias, 60, RData::A(A::new(10, 0, 0, 1))));
        m.answers.push(Record::from_rdata(host.clone(), 60, RData::A(A::new(10, 0, 0, 2))));
        m.answers.push(Record::from_rdata(Name::from_ascii("x.example.").unwrap(), 60, RData::A(A::new(6, 6, 6, 6))));
        let got = addresses(&m, &host, RecordType::A);
        assert_eq!(got, vec!["10.0.0.1".parse::<IpAddr>().unwrap(), "10.0.0.2".parse().unwrap()]);
        assert!(addresses(&m, &host, RecordType::AAAA).is_empty());
        // A CNAME loop ends.
        let mut m = Message::new(9, MessageType::Response, OpCode::Query);
        let b = Name::from_ascii("b.example.").unwrap();
        m.answers.push(Record::from_rdata(host.clone(), 60, RData::CNAME(CNAME(b.clone()))));
        m.answers.push(Record::from_rdata(b, 60, RData::CNAME(CNAME(host.clone()))));
        assert!(addresses(&m, &host, RecordType::A).is_empty());
    }
}
