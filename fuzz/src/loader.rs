//! Fuzz targets for the loader's untrusted text and packets: DNS answers
//! (`dns_answer`) and the kernel command line (`cmdline_split`), with the
//! seeds `seed_corpora` writes for them. Kept in a module of its own so that
//! the targets of other crates merge without touching these.

use std::fs;
use std::path::Path;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use stateless_loader::cmdline::{Config, split};
use stateless_loader::dns::{AnswerError, addresses, parse_answer, srv_answer};
use stateless_loader::srv::{self, SplitMix64};

/// The SRV name every `dns_answer` input is checked against.
pub const SRV_NAME: &str = "_stateless._tcp.lab.example.";
/// The host name every A/AAAA `dns_answer` input is checked against.
pub const HOST_NAME: &str = "cfg.lab.example.";

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("a constant name parses")
}

/// `parse_answer` over arbitrary bytes, as an answer to an SRV, an A and an
/// AAAA question, with the id the packet carries (so decoding is reached)
/// and with another id (which must be refused before decoding). What parses
/// goes through `srv_answer`, `addresses`, the RFC 2782 ordering and the
/// URL building, whose results must keep their promises: every record kept
/// is owned by the name asked, and every base URL is `scheme://host:port/`
/// with the target as its host and nothing else.
pub fn dns_answer(data: &[u8]) {
    let Some(id) = data.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        assert_eq!(parse_answer(data, 0, &name(SRV_NAME), RecordType::SRV).unwrap_err(), AnswerError::WrongId);
        return;
    };
    for (qname, rtype) in
        [(name(SRV_NAME), RecordType::SRV), (name(HOST_NAME), RecordType::A), (name(HOST_NAME), RecordType::AAAA)]
    {
        assert_eq!(parse_answer(data, id ^ 0x8001, &qname, rtype).unwrap_err(), AnswerError::WrongId);
        let Ok(msg) = parse_answer(data, id, &qname, rtype) else { continue };
        assert_eq!(msg.metadata.message_type, MessageType::Response);
        let _ = addresses(&msg, &qname, rtype);
        let answer = srv_answer(&msg, &qname);
        let mut usable = 0;
        for r in &answer.records {
            let Ok(url) = r.base_url("https") else { continue };
            usable += 1;
            assert_eq!(url.scheme(), "https");
            assert_eq!(url.host_str(), Some(r.host().to_ascii_lowercase().as_str()), "{r}");
            assert_eq!(url.port_or_known_default(), Some(r.port), "{r}");
            assert_eq!(url.path(), "/", "{r}");
            assert!(url.query().is_none() && url.fragment().is_none() && url.username().is_empty(), "{r}");
        }
        let targets = answer.records.iter().filter(|r| !r.host().is_empty()).count();
        assert!(usable <= targets);
        if let Ok(ordered) = srv::order(answer.records.clone(), &mut SplitMix64::new(u64::from(id))) {
            assert_eq!(ordered.len(), targets);
            assert!(ordered.windows(2).all(|w| w[0].priority <= w[1].priority));
        }
    }
}

/// The kernel command line splitter and the whole command line reader over
/// arbitrary bytes, read lossily as the loader reads `/proc/cmdline`. They
/// must not panic; every word found lies inside the line.
pub fn cmdline_split(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    let params = split(&line);
    assert!(params.len() <= line.len());
    for p in &params {
        assert!(line.contains(p.key), "{p}");
        if let Some(v) = p.value {
            assert!(line.contains(v), "{p}");
        }
    }
    if let Ok(config) = Config::from_cmdline(&line) {
        for t in &config.servers {
            assert!(line.contains(t.as_str()), "{t}");
        }
    }
}

/// Seeds for `dns_answer` and `cmdline_split`, made from scratch.
pub fn seed(corpus: &Path) {
    let write = |target: &str, file: &str, data: &[u8]| {
        fs::create_dir_all(corpus.join(target)).expect("creating corpus directory");
        fs::write(corpus.join(target).join(file), data).expect("writing seed");
    };
    let response = |qname: &Name, rtype: RecordType| {
        let mut m = Message::new(0x5eed, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(qname.clone(), rtype));
        m
    };
    let srv_name = name(SRV_NAME);
    let host = name(HOST_NAME);
    let target = name("a.lab.example.");

    let mut m = response(&srv_name, RecordType::SRV);
    m.answers.push(Record::from_rdata(srv_name.clone(), 60, RData::SRV(SRV::new(10, 5, 8443, target.clone()))));
    m.answers.push(Record::from_rdata(srv_name.clone(), 60, RData::SRV(SRV::new(20, 0, 8443, Name::root()))));
    m.additionals.push(Record::from_rdata(target, 60, RData::A(A::new(10, 0, 2, 2))));
    write("dns_answer", "srv_with_glue", &m.to_vec().expect("encoding"));

    let mut m = response(&srv_name, RecordType::SRV);
    let bad = Name::from_labels(vec![&b"evil/x:1@"[..], b"lab", b"example"]).expect("raw labels");
    m.answers.push(Record::from_rdata(srv_name.clone(), 60, RData::SRV(SRV::new(1, 1, 80, bad))));
    let other = name("_stateless._tcp.evil.example.");
    m.answers.push(Record::from_rdata(other, 60, RData::SRV(SRV::new(0, 0, 1, name("evil.example.")))));
    m.metadata.truncation = true;
    write("dns_answer", "srv_bad_targets", &m.to_vec().expect("encoding"));

    let mut m = response(&host, RecordType::A);
    let alias = name("real.lab.example.");
    m.answers.push(Record::from_rdata(host.clone(), 60, RData::CNAME(CNAME(alias.clone()))));
    m.answers.push(Record::from_rdata(alias, 60, RData::A(A::new(10, 0, 0, 1))));
    write("dns_answer", "a_via_cname", &m.to_vec().expect("encoding"));

    let mut m = response(&host, RecordType::AAAA);
    m.answers.push(Record::from_rdata(host.clone(), 60, RData::AAAA(AAAA::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))));
    write("dns_answer", "aaaa", &m.to_vec().expect("encoding"));

    let mut m = response(&host, RecordType::A);
    m.metadata.response_code = hickory_proto::op::ResponseCode::NXDomain;
    m.queries.clear();
    write("dns_answer", "nxdomain_no_question", &m.to_vec().expect("encoding"));

    let lines: [(&str, &[u8]); 5] = [
        ("typical", b"BOOT_IMAGE=/vmlinuz ro quiet rd.stateless.server=https://cfg/${node},http://b:8080/x rd.stateless.pin=sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU= rd.stateless.onfail=reboot"),
        ("quotes", b"\"rd.stateless.cache=LABEL=my cache\" rd.stateless.key=\"file:/a b\" -- init=/bin/sh"),
        ("not_utf8", b"label=caf\xe9 rd.stateless.node=n\xff rd.stateless.timeout=5\n"),
        ("srv", b"rd.stateless.domain=lab.example. rd.stateless.dns=[fd00::3]:5353 rd.stateless.insecure BOOTIF=01-52-54-00-12-34-56"),
        ("typos", b"rd.stateless.servr=HTTP://a stateless.server=x rd.stateless.server= rd.stateless.ca=/etc/ca.pem"),
    ];
    for (file, line) in lines {
        write("cmdline_split", file, line);
    }
}
