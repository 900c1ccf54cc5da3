//! The salted session's response HMAC against a real TPM: swtpm on
//! 127.0.0.1 (started by the test), reached through a small TCP proxy that
//! can change one byte of the TPM's answer on the way back and records the
//! wire both ways. An answer whose HMAC does not verify must be refused, and
//! no key may come out of it; the key must never cross the wire in clear.
//! These tests fail if the response HMAC check or the parameter encryption
//! is switched off (tried by hand: each breaks at least one of them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "../../tests/support/swtpm.rs"]
mod swtpm;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use stateless_bundle::Key;
use stateless_keys::sealed::Bank;
use stateless_keys::tpm::{Tpm, TpmError};
use swtpm::Swtpm;

const CC_UNSEAL: u32 = 0x15E;
const CC_CREATE: u32 = 0x153;
const CC_PCR_EVENT: u32 = 0x13C;

/// What the proxy does to the response of each command it picks.
#[derive(Clone, Copy)]
enum Tamper {
    /// Passes everything on unchanged.
    Nothing,
    /// XORs the byte `n` from the end of a TPM2_Unseal response (1: the
    /// last byte of the response HMAC, which ends the response) with 0x01.
    FromEnd(usize),
    /// XORs the byte at `at` (from the start of the response) of the
    /// successful responses to command `code`.
    At { code: u32, at: usize },
}

/// Everything that crossed the proxy: commands and responses, in order.
#[derive(Default)]
struct Wire {
    commands: Vec<Vec<u8>>,
    responses: Vec<Vec<u8>>,
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
/// the count of responses it changed.
fn proxy(upstream: u16, tamper: Tamper) -> (u16, Arc<AtomicUsize>) {
    let (port, changed, _) = recording_proxy(upstream, tamper);
    (port, changed)
}

/// [`proxy`], also recording the wire both ways.
fn recording_proxy(upstream: u16, tamper: Tamper) -> (u16, Arc<AtomicUsize>, Arc<Mutex<Wire>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let changed = Arc::new(AtomicUsize::new(0));
    let wire = Arc::new(Mutex::new(Wire::default()));
    let (counter, record) = (changed.clone(), wire.clone());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let (counter, record) = (counter.clone(), record.clone());
            std::thread::spawn(move || {
                let mut tpm = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                while let Some(cmd) = read_message(&mut client) {
                    let code = u32::from_be_bytes(cmd[6..10].try_into().unwrap());
                    tpm.write_all(&cmd).unwrap();
                    let Some(mut resp) = read_message(&mut tpm) else { break };
                    let rc = u32::from_be_bytes(resp[6..10].try_into().unwrap());
                    record.lock().unwrap().commands.push(cmd);
                    let at = match (code, rc, tamper) {
                        (CC_UNSEAL, 0, Tamper::FromEnd(n)) => Some(resp.len() - n),
                        (c, 0, Tamper::At { code, at }) if c == code => Some(at),
                        _ => None,
                    };
                    if let Some(at) = at {
                        resp[at] ^= 0x01;
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    record.lock().unwrap().responses.push(resp.clone());
                    if client.write_all(&resp).is_err() {
                        break;
                    }
                }
                let _ = client.shutdown(Shutdown::Both);
            });
        }
    });
    (port, changed, wire)
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

/// Where the parts of a successful response of a command with one
/// session sit (TPM 2.0 Part 1 §18.10): the header (10 bytes), no handles
/// for these commands, parameterSize (4), the parameters, then the
/// session's TPM2B nonceTPM (2 + 16), attributes (1) and TPM2B HMAC (2 + 32).
struct Layout {
    /// First byte of the parameters.
    params: usize,
    /// The session attributes byte.
    attrs: usize,
    /// First byte of nonceTPM's contents.
    nonce: usize,
    /// First byte of the HMAC.
    hmac: usize,
}

fn layout(resp: &[u8]) -> Layout {
    let n = resp.len();
    Layout { params: 14, attrs: n - 35, nonce: n - 35 - 16, hmac: n - 32 }
}

/// The successful TPM2_Unseal response on the wire, as a model for offsets.
fn unseal_response(wire: &Wire) -> Vec<u8> {
    let i = wire.commands.iter().position(|c| c[6..10] == CC_UNSEAL.to_be_bytes()).expect("no TPM2_Unseal");
    wire.responses[i].clone()
}

/// Whether any 8 bytes in a row of `key` appear in `msgs`.
fn leaks(key: &[u8], msgs: &[Vec<u8>]) -> bool {
    msgs.iter().any(|m| key.windows(8).any(|w| m.windows(8).any(|x| x == w)))
}

#[test]
fn the_key_never_crosses_the_wire_in_clear() {
    let swtpm = Swtpm::start();
    let key = Key::generate().unwrap();
    let (port, _, wire) = recording_proxy(swtpm.port, Tamper::Nothing);
    let sealed = open(port).seal(&key, Bank::Sha256, &[7]).unwrap();
    assert_eq!(open(port).unseal(&sealed).unwrap().as_bytes(), key.as_bytes());
    let wire = wire.lock().unwrap();
    let codes: Vec<u32> = wire.commands.iter().map(|c| u32::from_be_bytes(c[6..10].try_into().unwrap())).collect();
    assert!(codes.contains(&CC_CREATE) && codes.contains(&CC_UNSEAL), "{codes:x?}");
    // To the TPM (TPM2_Create's inSensitive) and back (TPM2_Unseal's
    // outData): encrypted both ways. The check itself is sound: the key's
    // bytes are found when they are there.
    assert!(!leaks(key.as_bytes(), &wire.commands), "the key crossed to the TPM in clear");
    assert!(!leaks(key.as_bytes(), &wire.responses), "the key came back from the TPM in clear");
    assert!(leaks(key.as_bytes(), &[[&[0u8; 3][..], key.as_bytes()].concat()]));
    // The unsealed outData on the wire is 32 bytes of ciphertext.
    let resp = unseal_response(&wire);
    let at = layout(&resp).params;
    assert_eq!(&resp[at..at + 2], &[0, 32]);
    assert_ne!(&resp[at + 2..at + 34], key.as_bytes());
}

#[test]
fn every_part_of_a_flipped_unseal_response_is_refused_by_the_hmac() {
    let swtpm = Swtpm::start();
    let key = Key::generate().unwrap();
    let sealed = open(swtpm.port).seal(&key, Bank::Sha256, &[7]).unwrap();
    let (port, _, wire) = recording_proxy(swtpm.port, Tamper::Nothing);
    open(port).unseal(&sealed).unwrap();
    let resp = unseal_response(&wire.lock().unwrap());
    let l = layout(&resp);
    // The encrypted key (first, middle and last byte of outData), the TPM's
    // nonce, the session attributes (continueSession/encrypt flags: the
    // HMAC covers them) and the HMAC itself. Each must be refused as an
    // answer that did not come from the TPM, not as a wrong key: with the
    // HMAC check gone, a flipped attribute would unseal and a flipped
    // ciphertext would only be caught later, by the key id.
    let places = [
        ("outData first byte", l.params + 2),
        ("outData middle", l.params + 2 + 16),
        ("outData last byte", l.params + 2 + 31),
        ("nonceTPM", l.nonce + 3),
        ("session attributes", l.attrs),
        ("HMAC first byte", l.hmac),
        ("HMAC last byte", l.hmac + 31),
    ];
    for (what, at) in places {
        let (port, changed) = proxy(swtpm.port, Tamper::At { code: CC_UNSEAL, at });
        let err = open(port).unseal(&sealed).unwrap_err();
        assert_eq!(changed.load(Ordering::Relaxed), 1, "{what}: the proxy saw no TPM2_Unseal answer");
        assert!(matches!(err, TpmError::BadResponseHmac { command: "TPM2_Unseal" }), "{what}: {err:?}");
    }
    assert_eq!(open(swtpm.port).unseal(&sealed).unwrap().id(), key.id());
}

#[test]
fn sealing_and_the_lock_refuse_a_flipped_response() {
    let swtpm = Swtpm::start();
    let key = Key::generate().unwrap();
    // TPM2_Create's answer (the new object's blobs): a flipped HMAC byte or
    // a flipped byte of the blobs, refused; nothing is written.
    for from_end in [1, 40] {
        let (port, changed, wire) = recording_proxy(swtpm.port, Tamper::Nothing);
        drop(open(port).seal(&key, Bank::Sha256, &[7]).unwrap());
        let i = wire.lock().unwrap().commands.iter().position(|c| c[6..10] == CC_CREATE.to_be_bytes()).unwrap();
        let len = wire.lock().unwrap().responses[i].len();
        drop(changed);
        let (port, changed) = proxy(swtpm.port, Tamper::At { code: CC_CREATE, at: len - from_end });
        let err = open(port).seal(&key, Bank::Sha256, &[7]).unwrap_err();
        assert_eq!(changed.load(Ordering::Relaxed), 1);
        assert!(matches!(err, TpmError::BadResponseHmac { command: "TPM2_Create" }), "{from_end}: {err:?}");
    }
    // The lock's TPM2_PCR_Event: an interposer cannot drop the extend and
    // answer "done" (the flipped answer stands for a forged one).
    let srk = open(swtpm.port).srk_name().unwrap();
    let (port, changed) = proxy(swtpm.port, Tamper::At { code: CC_PCR_EVENT, at: 14 + 4 + 2 + 1 });
    let err = open(port).lock(&srk).unwrap_err();
    assert_eq!(changed.load(Ordering::Relaxed), 1);
    assert!(matches!(err, TpmError::BadResponseHmac { command: "TPM2_PCR_Event" }), "{err:?}");
    // And the lock goes only to the SRK the keys were sealed under.
    let mut other = srk.clone();
    other[5] ^= 1;
    assert!(matches!(open(swtpm.port).lock(&other), Err(TpmError::SrkMismatch)));
    open(swtpm.port).lock(&srk).unwrap();
}
