//! A small synchronous DNS client for SRV and address lookups.
//!
//! The initramfs has no NSS and glibc's resolver is not usable from a static
//! binary, so the loader asks the name servers itself: one UDP query per
//! server with a short timeout, TCP when the answer is truncated, messages
//! built and parsed by `hickory-proto`. Name servers come from
//! `rd.stateless.dns=` or `/etc/resolv.conf` (written by dracut's DHCP hook),
//! as does the search domain used for SRV discovery.

use std::io::{Read, Write};
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
        let msg = self.query(name, RecordType::SRV, deadline)?;
        Ok(srv_answer(&msg))
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
                Ok(msg) => out.extend(addresses(&msg)),
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

    fn query(&self, name: &str, rtype: RecordType, deadline: Instant) -> Result<Message, DnsError> {
        if self.servers.is_empty() {
            return Err(DnsError::NoServers);
        }
        let fqdn = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
            .map_err(|_| DnsError::BadName(name.to_owned()))?;
        let mut last = None;
        for server in &self.servers {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let timeout = remaining.min(QUERY_TIMEOUT);
            match exchange(*server, &fqdn, rtype, timeout) {
                Ok(msg) => match msg.metadata.response_code {
                    ResponseCode::NoError => return Ok(msg),
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
fn exchange(server: SocketAddr, name: &Name, rtype: RecordType, timeout: Duration) -> Result<Message, DnsError> {
    let id = new_id();
    let mut q = Message::new(id, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(name.clone(), rtype));
    let wire = q.to_vec().map_err(|e| DnsError::Malformed(e.to_string()))?;
    let net = |e: std::io::Error| DnsError::NoAnswer { name: name.to_ascii(), servers: format!("{server} ({e})") };

    let bind: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let sock = UdpSocket::bind(bind).map_err(net)?;
    sock.connect(server).map_err(net)?;
    sock.set_read_timeout(Some(timeout)).map_err(net)?;
    sock.send(&wire).map_err(net)?;
    let started = Instant::now();
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let n = sock.recv(&mut buf).map_err(net)?;
        // Stray or spoofed datagrams with another id are ignored, not fatal.
        match parse_answer(buf.get(..n).unwrap_or_default(), id, name, rtype) {
            Ok(msg) if msg.metadata.truncation => break,
            Ok(msg) => return Ok(msg),
            Err(AnswerError::WrongId) if started.elapsed() < timeout => continue,
            Err(AnswerError::WrongId) => return Err(DnsError::Malformed("answer id mismatch".into())),
            Err(AnswerError::Bad(e)) => return Err(DnsError::Malformed(e)),
        }
    }
    let mut tcp = TcpStream::connect_timeout(&server, timeout).map_err(net)?;
    tcp.set_read_timeout(Some(timeout)).map_err(net)?;
    tcp.set_write_timeout(Some(timeout)).map_err(net)?;
    let len = u16::try_from(wire.len()).map_err(|_| DnsError::Malformed("query too long".into()))?;
    tcp.write_all(&len.to_be_bytes()).map_err(net)?;
    tcp.write_all(&wire).map_err(net)?;
    let mut lenb = [0u8; 2];
    tcp.read_exact(&mut lenb).map_err(net)?;
    let n = usize::from(u16::from_be_bytes(lenb)).min(MAX_TCP);
    let mut body = vec![0u8; n];
    tcp.read_exact(&mut body).map_err(net)?;
    parse_answer(&body, id, name, rtype).map_err(|e| match e {
        AnswerError::WrongId => DnsError::Malformed("answer id mismatch".into()),
        AnswerError::Bad(e) => DnsError::Malformed(e),
    })
}

/// Why an answer was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum AnswerError {
    /// The id differs from the query's.
    WrongId,
    /// Undecodable, not a response, or for another question.
    Bad(String),
}

/// Decodes an answer and checks it answers our question. Untrusted input:
/// this is the fuzz target for DNS.
pub fn parse_answer(bytes: &[u8], id: u16, name: &Name, rtype: RecordType) -> Result<Message, AnswerError> {
    let msg = Message::from_vec(bytes).map_err(|e| AnswerError::Bad(e.to_string()))?;
    if msg.metadata.id != id {
        return Err(AnswerError::WrongId);
    }
    if msg.metadata.message_type != MessageType::Response {
        return Err(AnswerError::Bad("not a response".into()));
    }
    match msg.queries.first() {
        Some(q) if q.query_type() == rtype && q.name().eq_case(name) => Ok(msg),
        // Some servers omit the question in error answers.
        None if msg.metadata.response_code != ResponseCode::NoError => Ok(msg),
        _ => Err(AnswerError::Bad("answer is for another question".into())),
    }
}

fn bare(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_owned()
}

/// SRV records and glue addresses from an answer.
pub fn srv_answer(msg: &Message) -> SrvAnswer {
    let records = msg
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => {
                let target = if s.target.is_root() { ".".to_owned() } else { bare(&s.target) };
                Some(SrvRecord { priority: s.priority, weight: s.weight, port: s.port, target })
            }
            _ => None,
        })
        .collect();
    let addresses = msg
        .additionals
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((bare(&r.name), IpAddr::V4(a.0))),
            RData::AAAA(a) => Some((bare(&r.name), IpAddr::V6(a.0))),
            _ => None,
        })
        .collect();
    SrvAnswer { records, addresses }
}

fn addresses(msg: &Message) -> Vec<IpAddr> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, SRV};

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
        let a = srv_answer(&msg);
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
}
