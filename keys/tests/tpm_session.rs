//! The salted session's response HMAC against a real TPM: swtpm on
//! 127.0.0.1 (started by the test), reached through a small TCP proxy that
//! can change one byte of the TPM's answer on the way back. An answer whose
//! HMAC does not verify must be refused, and no key may come out of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "../../tests/support/swtpm.rs"]
mod swtpm;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use stateless_bundle::Key;
use stateless_keys::sealed::Bank;
use stateless_keys::tpm::{Tpm, TpmError};
use swtpm::Swtpm;

const CC_UNSEAL: u32 = 0x15E;

/// What the proxy does to the response of each TPM2_Unseal.
#[derive(Clone, Copy)]
enum Tamper {
    /// Passes it on unchanged.
    Nothing,
    /// XORs the byte `n` from the end (1: the last byte of the response
    /// HMAC, which ends the response) with 0x01.
    FromEnd(usize),
}

/// Reads one TPM message (10-byte header with its size, then the rest).
fn read_message(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut msg = vec![0u8; 10];
    s.read_exact(&mut msg).ok()?;
    let size = u32::from_be_bytes(msg[2..6].try_into().unwrap()) as usize;
    assert!((10..=8192).contains(&size), "TPM message of {size} bytes");
    msg.resize(size, 0);
    s.read_exact(&mut msg[10..]).ok()?;
    Some(msg)
}

/// A proxy on 127.0.0.1 in front of swtpm's data port. Returns its port and
/// the count of TPM2_Unseal responses it changed.
fn proxy(upstream: u16, tamper: Tamper) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let changed = Arc::new(AtomicUsize::new(0));
    let counter = changed.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut tpm = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                while let Some(cmd) = read_message(&mut client) {
                    let code = u32::from_be_bytes(cmd[6..10].try_into().unwrap());
                    tpm.write_all(&cmd).unwrap();
                    let Some(mut resp) = read_message(&mut tpm) else { break };
                    let rc = u32::from_be_bytes(resp[6..10].try_into().unwrap());
                    if let (CC_UNSEAL, 0, Tamper::FromEnd(n)) = (code, rc, tamper) {
                        let at = resp.len() - n;
                        resp[at] ^= 0x01;
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    if client.write_all(&resp).is_err() {
                        break;
                    }
                }
                let _ = client.shutdown(Shutdown::Both);
            });
        }
    });
    (port, changed)
}

fn open(port: u16) -> Tpm {
    Tpm::open(&format!("swtpm:host=127.0.0.1,port={port}").parse().unwrap()).unwrap()
}

#[test]
fn unseal_refuses_a_response_whose_hmac_does_not_verify() {
    let swtpm = Swtpm::start();
    let key = Key::generate().unwrap();
    let sealed = open(swtpm.port).seal(&key, Bank::Sha256, &[7]).unwrap();

    // Through the proxy, unchanged: the key comes back (the proxy is
    // transparent, so the refusals below are the HMAC's doing).
    let (port, changed) = proxy(swtpm.port, Tamper::Nothing);
    let got = open(port).unseal(&sealed).unwrap();
    assert_eq!(got.id(), key.id());
    assert_eq!(changed.load(Ordering::Relaxed), 0);

    // One byte of the response HMAC changed, at its end and at its start
    // (the HMAC is the last 32 bytes of the response): refused, by name.
    for from_end in [1, 16, 32] {
        let (port, changed) = proxy(swtpm.port, Tamper::FromEnd(from_end));
        let err = open(port).unseal(&sealed).unwrap_err();
        assert_eq!(changed.load(Ordering::Relaxed), 1, "the proxy saw no TPM2_Unseal answer");
        assert!(
            matches!(err, TpmError::BadResponseHmac { command: "TPM2_Unseal" }),
            "byte {from_end} from the end: {err:?}"
        );
        assert_eq!(
            err.to_string(),
            "TPM2_Unseal: the response HMAC does not verify: the answer did not come from the TPM"
        );
    }

    // The TPM is unharmed: the key still unseals directly.
    assert_eq!(open(swtpm.port).unseal(&sealed).unwrap().id(), key.id());
}
