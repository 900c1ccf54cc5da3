//! Load generator for `bench/storm --reports`: NODES distinct nodes
//! (`PREFIX0000` …), all enrolled for push with push keys derived from one
//! site key, post signed boot reports (`POST /v1/nodes/{node}/report`) to a
//! server on 127.0.0.1 at once, one thread and a new connection per report,
//! as booting nodes do. All threads start together after DELAY seconds (the
//! burst of a power cut); each node then posts one report every INTERVAL
//! seconds until SECONDS have passed since the start, at most MAX reports.
//!
//! With CA_PEM, every report goes over TLS (a full handshake each, as a
//! booting node makes), trusting that certificate for 127.0.0.1.
//!
//! Prints one line: `sent N kept K refused R errors E` (kept: answered
//! 201; refused: any other status; errors: no answer). The bench compares
//! K with the report files the server stored: none may be lost.
//!
//! Usage: report_storm PORT KEYFILE NODES PREFIX DELAY SECONDS INTERVAL MAX [CA_PEM]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use stateless_bundle::Key;
use stateless_server::push_auth::PushSigner;

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    kept: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 9 && args.len() != 10 {
        eprintln!("usage: report_storm PORT KEYFILE NODES PREFIX DELAY SECONDS INTERVAL MAX [CA_PEM]");
        std::process::exit(2);
    }
    let tls = args.get(9).map(|ca| client_config(ca));
    let port: u16 = args[1].parse().unwrap();
    let key = Key::from_file_text(&std::fs::read(&args[2]).unwrap()).unwrap();
    let nodes: usize = args[3].parse().unwrap();
    let prefix = args[4].clone();
    let delay = Duration::from_secs_f64(args[5].parse().unwrap());
    let seconds = Duration::from_secs_f64(args[6].parse().unwrap());
    let interval = Duration::from_secs_f64(args[7].parse().unwrap());
    let max: u64 = args[8].parse().unwrap();

    let counts = Arc::new(Counts::default());
    // Every thread waits here, the main thread too: the reports start at once.
    let start = Arc::new(Barrier::new(nodes + 1));
    let mut threads = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let node = format!("{prefix}{i:04}");
        let signer = PushSigner::new(&key, &node).unwrap();
        let (counts, start, tls) = (Arc::clone(&counts), Arc::clone(&start), tls.clone());
        let t = std::thread::Builder::new().stack_size(128 * 1024).spawn(move || {
            start.wait();
            let t0 = Instant::now();
            for n in 0..max {
                let due = interval * u32::try_from(n).unwrap();
                if due >= seconds {
                    break;
                }
                if let Some(wait) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(wait);
                }
                counts.sent.fetch_add(1, Ordering::Relaxed);
                match post(port, &node, &signer, n, tls.as_ref()) {
                    Some(201) => counts.kept.fetch_add(1, Ordering::Relaxed),
                    Some(_) => counts.refused.fetch_add(1, Ordering::Relaxed),
                    None => counts.errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
        threads.push(t.unwrap());
    }
    std::thread::sleep(delay);
    start.wait();
    for t in threads {
        t.join().unwrap();
    }
    println!(
        "sent {} kept {} refused {} errors {}",
        counts.sent.load(Ordering::Relaxed),
        counts.kept.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed)
    );
}

/// A TLS client that trusts the certificate in `ca` (PEM).
fn client_config(ca: &str) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// One report on a new connection: the status, `None` when no answer came.
fn post(port: u16, node: &str, signer: &PushSigner, n: u64, tls: Option<&Arc<rustls::ClientConfig>>) -> Option<u16> {
    let path = format!("/v1/nodes/{node}/report");
    let body = format!(
        r#"{{"result":"applied","source":"server","node":"{node}","generation":{n},"message":"applied generation {n}","capabilities":{{"cpus":2,"tpm":{{"present":true,"version":"2.0"}}}}}}"#
    );
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let digest: [u8; 32] = Sha256::digest(body.as_bytes()).into();
    let auth = signer.authorization("POST", &path, ts, &digest, body.len() as u64);
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Authorization: {auth}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let mut resp = Vec::new();
    match tls {
        None => {
            let mut s = s;
            s.write_all(req.as_bytes()).ok()?;
            let _ = s.read_to_end(&mut resp);
        }
        Some(config) => {
            let name = rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
            let conn = rustls::ClientConnection::new(Arc::clone(config), name).ok()?;
            let mut s = rustls::StreamOwned::new(conn, s);
            s.write_all(req.as_bytes()).ok()?;
            s.flush().ok()?;
            let _ = s.read_to_end(&mut resp);
        }
    }
    std::str::from_utf8(resp.get(9..12)?).ok()?.parse().ok()
}
