//! Scale past one server: several nginx mirrors of one bundle tree behind
//! dnsmasq SRV records with priorities and weights, one mirror dead and
//! one stalling. A loader boots through them, and 1,000 simulated clients
//! (the loader's own DNS client and RFC 2782 ordering, each with its own
//! random seed, as each node seeds from `getrandom` at boot) fetch from the
//! first mirror that answers; the share each weighted mirror gets is
//! measured against its weight.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use stateless_bundle::Scope;
use stateless_loader::dns::Resolver;
use stateless_loader::srv::{self, SplitMix64, SrvRecord};
use support::{Dnsmasq, Nginx, Node, Proxy, Site};

/// How long a simulated client waits on a mirror before moving on (the
/// loader's own stall timeout is 10 s; the spread does not depend on it).
const CLIENT_STALL: Duration = Duration::from_millis(100);

/// One GET of the node's bundle from `port`: whether it answered 200.
fn fetch(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), CLIENT_STALL) else {
        return false;
    };
    s.set_read_timeout(Some(CLIENT_STALL)).unwrap();
    if s.write_all(b"GET /v1/nodes/node42/bundle HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

#[test]
fn weighted_mirrors_share_a_boot_storm_by_weight_past_a_dead_and_a_stalling_one() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 3, Scope::Node("node42".into()), &[("etc/motd", b"via a mirror\n")], true);
    let mirrors: Vec<Nginx> = (0..3).map(|_| Nginx::start(&site.www(), None, "")).collect();
    let dead = support::free_port();
    let stall = Proxy::stalling();
    // Priority 10: a dead mirror and a stalling one, tried first by
    // everyone; priority 20: three live mirrors weighted 60/30/10.
    let weights = [60u16, 30, 10];
    let mut srv_rows = vec![(10, 50, dead, "dead.lab.test"), (10, 50, stall.port, "stall.lab.test")];
    let names = ["m1.lab.test", "m2.lab.test", "m3.lab.test"];
    for ((m, w), name) in mirrors.iter().zip(weights).zip(names) {
        srv_rows.push((20, w, m.port, name));
    }
    let hosts: Vec<(&str, &str)> =
        ["dead.lab.test", "stall.lab.test"].iter().chain(names.iter()).map(|n| (*n, "127.0.0.1")).collect();
    let dns = Dnsmasq::start(&srv_rows, &hosts);

    // A real loader boots through the dead mirror to a live one. (The
    // stalling one is left out here: the loader waits its full stall
    // timeout on it, which the e2e tests cover; the simulation below
    // includes it.)
    let dns_only_dead = Dnsmasq::start(
        &[
            (10, 50, dead, "dead.lab.test"),
            (20, 60, mirrors[0].port, "m1.lab.test"),
            (20, 40, mirrors[1].port, "m2.lab.test"),
        ],
        &hosts,
    );
    let node = Node::new();
    let (code, err, status) = node.boot(&format!(
        "rd.stateless.domain=lab.test rd.stateless.dns=127.0.0.1:{} rd.stateless.insecure rd.stateless.node=node42 rd.stateless.key=file:{}",
        dns_only_dead.port,
        site.key_file.display()
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("via a mirror\n"));
    assert!(status["attempts"][0].as_str().unwrap().contains(&format!("dead.lab.test:{dead}")), "{status}");

    // The answer, through the loader's own DNS client.
    let resolver = Resolver::new(vec![([127, 0, 0, 1], dns.port).into()]);
    let answer = resolver.srv("_stateless._tcp.lab.test", Instant::now() + Duration::from_secs(5)).unwrap();
    assert_eq!(answer.records.len(), 5, "{:?}", answer.records);

    // 1,000 clients, 8 at a time.
    const CLIENTS: u64 = 1000;
    let served: HashMap<u16, u64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8u64)
            .map(|w| {
                let records: Vec<SrvRecord> = answer.records.clone();
                s.spawn(move || {
                    let mut served: HashMap<u16, u64> = HashMap::new();
                    for client in (w..CLIENTS).step_by(8) {
                        // Each node's own seed (at boot, from getrandom).
                        let seed = client.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed;
                        let order = srv::order(records.clone(), &mut SplitMix64::new(seed)).unwrap();
                        let port = order.iter().map(|r| r.port).find(|p| fetch(*p)).expect("no mirror answered");
                        *served.entry(port).or_default() += 1;
                    }
                    served
                })
            })
            .collect();
        let mut all = HashMap::new();
        for w in workers {
            for (p, n) in w.join().unwrap() {
                *all.entry(p).or_default() += n;
            }
        }
        all
    });
    assert_eq!(served.values().sum::<u64>(), CLIENTS);
    assert!(!served.contains_key(&dead) && !served.contains_key(&stall.port), "{served:?}");
    let total_weight: f64 = weights.iter().map(|w| f64::from(*w)).sum();
    let mut line = String::new();
    for (m, w) in mirrors.iter().zip(weights) {
        let share = served.get(&m.port).copied().unwrap_or(0) as f64 / CLIENTS as f64;
        let want = f64::from(w) / total_weight;
        line.push_str(&format!("weight {w}: {:.1}% (want {:.1}%); ", share * 100.0, want * 100.0));
        // Within 10% of its weight's share, or, for a small weight where
        // 10% is below what 1,000 samples resolve, within three standard
        // deviations of the binomial sampling noise.
        let noise = 3.0 * (want * (1.0 - want) / CLIENTS as f64).sqrt();
        assert!((share - want).abs() <= (want * 0.10).max(noise), "{line} {served:?}");
    }
    // The measurement, for docs/performance.md (cargo test -- --nocapture).
    println!("spread of {CLIENTS} clients over weighted mirrors: {line}");
}
