//! Rollback counters in TPM NV against swtpm on 127.0.0.1: defined on
//! first use, raised, locked until the next TPM reset, never lowered by
//! deleting and redefining them (with tpm2-tools, as root on the node
//! could), and a full NV or a taken handle range gives the documented
//! errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "../../tests/support/swtpm.rs"]
mod swtpm;

use std::process::Command;

use stateless_keys::tpm::Tpm;
use stateless_keys::tpm::nv::{self, NvError, Raised};
use swtpm::Swtpm;

fn open(swtpm: &Swtpm) -> Tpm {
    Tpm::open(&swtpm.selector().parse().unwrap()).unwrap()
}

/// Runs a tpm2-tools command against `swtpm`; returns whether it worked.
/// swtpm serves one connection at a time: no `Tpm` may be open meanwhile.
fn tool(swtpm: &Swtpm, args: &[&str]) -> bool {
    let out = Command::new("timeout")
        .arg("20")
        .args(args)
        .env("TPM2TOOLS_TCTI", swtpm.selector())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (apt-get install tpm2-tools)", args[0]));
    out.status.success()
}

fn hex(h: u32) -> String {
    format!("{h:#010x}")
}

#[test]
fn counters_are_defined_raised_and_read_per_target() {
    let swtpm = Swtpm::start();
    let mut tpm = open(&swtpm);
    assert_eq!(tpm.rollback_floor("node:n1", false).unwrap(), None);
    let first = tpm.rollback_floor("node:n1", true).unwrap().unwrap();
    assert_eq!((first.generation, first.defined), (0, true));
    assert_eq!(first.handle, nv::first_handle("node:n1"));
    assert_eq!(tpm.rollback_raise("node:n1", 5).unwrap(), Raised::To(5));
    assert_eq!(tpm.rollback_raise("node:n1", 3).unwrap(), Raised::Already(5));
    assert_eq!(tpm.rollback_raise("node:n1", 5).unwrap(), Raised::Already(5));
    assert_eq!(tpm.rollback_raise("default", 2).unwrap(), Raised::To(2));
    assert_eq!(tpm.rollback_raise("group:rack7", 0).unwrap(), Raised::Already(0));
    // A generation further away than one boot raises: spread over boots.
    let far = nv::MAX_STEPS + 10;
    assert_eq!(tpm.rollback_raise("plugin:acme", far).unwrap(), Raised::Partly(nv::MAX_STEPS));
    assert_eq!(tpm.rollback_raise("plugin:acme", far).unwrap(), Raised::To(far));
    assert!(matches!(tpm.rollback_raise("node:n1", u64::MAX), Err(NvError::TooHigh { .. })));

    // A new connection (a new loader process) reads the same floors.
    drop(tpm);
    let mut tpm = open(&swtpm);
    let floor = |tpm: &mut Tpm, t: &str| tpm.rollback_floor(t, false).unwrap().map(|f| f.generation);
    assert_eq!(floor(&mut tpm, "node:n1"), Some(5));
    assert_eq!(floor(&mut tpm, "default"), Some(2));
    assert_eq!(floor(&mut tpm, "group:rack7"), Some(0));
    assert_eq!(floor(&mut tpm, "node:n2"), None);
    assert!(!tpm.rollback_floor("node:n1", true).unwrap().unwrap().defined);

    let cap = tpm.nv_capacity().unwrap();
    eprintln!("swtpm NV: {cap:?}");
    assert!(cap.counters >= 4, "{cap:?}");
    assert!(cap.indices >= cap.counters, "{cap:?}");
}

#[test]
fn locked_counters_wait_for_the_next_tpm_reset() {
    let swtpm = Swtpm::start();
    let mut tpm = open(&swtpm);
    tpm.rollback_raise("node:n1", 3).unwrap();
    tpm.rollback_raise("default", 1).unwrap();
    assert_eq!(tpm.rollback_lock().unwrap(), 2);
    // Locked already: nothing more to lock.
    assert_eq!(tpm.rollback_lock().unwrap(), 0);
    let err = tpm.rollback_raise("node:n1", 4).unwrap_err();
    assert!(matches!(err, NvError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("locked until the TPM is reset"), "{err}");
    // Root on the running node cannot burn it forward either.
    drop(tpm);
    let h = hex(nv::first_handle("node:n1"));
    assert!(!tool(&swtpm, &["tpm2_nvincrement", &h, "-C", &h]));
    // The floor can still be read.
    let mut tpm = open(&swtpm);
    assert_eq!(tpm.rollback_floor("node:n1", false).unwrap().unwrap().generation, 3);
    drop(tpm);
    swtpm.reboot();
    let mut tpm = open(&swtpm);
    assert_eq!(tpm.rollback_raise("node:n1", 4).unwrap(), Raised::To(4));
}

#[test]
fn deleting_a_counter_does_not_lower_the_floor() {
    let swtpm = Swtpm::start();
    let mut tpm = open(&swtpm);
    tpm.rollback_raise("node:n1", 7).unwrap();
    let h = nv::first_handle("node:n1");
    drop(tpm);
    // Root with the owner's (empty) auth deletes the counter ...
    assert!(tool(&swtpm, &["tpm2_nvundefine", &hex(h), "-C", "o"]));
    let mut tpm = open(&swtpm);
    assert_eq!(tpm.rollback_floor("node:n1", false).unwrap(), None);
    // ... and the loader's next read defines a new one, which the TPM
    // starts above every counter it ever deleted.
    let again = tpm.rollback_floor("node:n1", true).unwrap().unwrap();
    assert!(again.defined);
    assert!(again.generation >= 7, "floor after delete and redefine: {}", again.generation);

    // An ordinary index with the target's tag in the counter's place could
    // be written with any number: it is not taken for the counter.
    drop(tpm);
    assert!(tool(&swtpm, &["tpm2_nvundefine", &hex(h), "-C", "o"]));
    let dir = tempfile::tempdir().unwrap();
    let tag = dir.path().join("tag");
    std::fs::write(&tag, nv::target_tag("node:n1")).unwrap();
    let attrs = "ownerwrite|ownerread|authread|authwrite|no_da";
    assert!(tool(&swtpm, &["tpm2_nvdefine", &hex(h), "-C", "o", "-s", "8", "-a", attrs, "-L", tag.to_str().unwrap()]));
    let zero = dir.path().join("zero");
    std::fs::write(&zero, [0u8; 8]).unwrap();
    assert!(tool(&swtpm, &["tpm2_nvwrite", &hex(h), "-C", "o", "-i", zero.to_str().unwrap()]));
    let mut tpm = open(&swtpm);
    let moved = tpm.rollback_floor("node:n1", true).unwrap().unwrap();
    assert_ne!(moved.handle, h);
    assert!(moved.generation >= 7, "floor beside a squatter: {}", moved.generation);
}

#[test]
fn a_taken_handle_range_and_a_full_nv_are_named() {
    let swtpm = Swtpm::start();
    let index_max = open(&swtpm).nv_capacity().unwrap().index_max;
    // Every handle "group:full" may use holds another index.
    for h in nv::probe_handles("group:full") {
        assert!(tool(&swtpm, &["tpm2_nvdefine", &hex(h), "-C", "o", "-s", "1", "-a", "ownerwrite|ownerread"]));
    }
    let mut tpm = open(&swtpm);
    let err = tpm.rollback_floor("group:full", true).unwrap_err();
    assert!(matches!(err, NvError::Exhausted { .. }), "{err}");
    assert!(err.to_string().contains("has no place in the TPM"), "{err}");

    drop(tpm);
    // Fill the NV with large ordinary indices until the TPM says it is full.
    let max = index_max.clamp(64, 2048).to_string();
    let mut filled = 0;
    for i in 0..2048u32 {
        let h = hex(0x0140_0000 + i);
        if !tool(&swtpm, &["tpm2_nvdefine", &h, "-C", "o", "-s", &max, "-a", "ownerwrite|ownerread"]) {
            break;
        }
        filled += 1;
    }
    assert!(filled > 0 && filled < 2048, "filled {filled}");
    // Fill what room is left with small ones, then with counters (swtpm
    // keeps room for a few counters after ordinary indices no longer fit).
    for (base, size, attrs) in
        [(0x0141_0000u32, "1", "ownerwrite|ownerread"), (0x0142_0000, "8", "ownerwrite|ownerread|nt=counter")]
    {
        for i in 0..4096u32 {
            let h = hex(base + i);
            if !tool(&swtpm, &["tpm2_nvdefine", &h, "-C", "o", "-s", size, "-a", attrs]) {
                break;
            }
        }
    }
    let mut tpm = open(&swtpm);
    let err = tpm.rollback_floor("node:new", true).unwrap_err();
    assert!(matches!(err, NvError::Full { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "no room in the TPM's NV for the rollback counter of node:new (TPM_RC_NV_SPACE): \
         its generations are not kept in the TPM (see docs/keys.md)"
    );
    // Reading without defining still answers: no counter.
    assert_eq!(tpm.rollback_floor("node:new", false).unwrap(), None);
}

/// Reads one TPM message (10-byte header with its size, then the rest).
fn read_message(s: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut msg = vec![0u8; 10];
    s.read_exact(&mut msg).ok()?;
    let size = u32::from_be_bytes(msg[2..6].try_into().unwrap()) as usize;
    assert!((10..=8192).contains(&size), "TPM message of {size} bytes");
    msg.resize(size, 0);
    s.read_exact(&mut msg[10..]).ok()?;
    Some(msg)
}

/// A hostile TPM: a proxy on 127.0.0.1 in front of swtpm that hands every
/// successful answer to command `code` to `tamper` before passing it on.
fn hostile(upstream: u16, code: u32, tamper: Tamper) -> u16 {
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let mut tpm = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
            while let Some(cmd) = read_message(&mut client) {
                let cc = u32::from_be_bytes(cmd[6..10].try_into().unwrap());
                tpm.write_all(&cmd).unwrap();
                let Some(mut resp) = read_message(&mut tpm) else { break };
                let rc = u32::from_be_bytes(resp[6..10].try_into().unwrap());
                if cc == code && rc == 0 {
                    tamper(&mut resp);
                    let size = (resp.len() as u32).to_be_bytes();
                    resp[2..6].copy_from_slice(&size);
                }
                if client.write_all(&resp).is_err() {
                    break;
                }
            }
            let _ = client.shutdown(Shutdown::Both);
        }
    });
    port
}

/// What a hostile TPM does to an answer.
type Tamper = fn(&mut Vec<u8>);

/// Replaces the parameters of an answer with a session area.
fn set_params(r: &mut Vec<u8>, params: &[u8]) {
    let n = u32::from_be_bytes(r[10..14].try_into().unwrap()) as usize;
    let auth = r[14 + n..].to_vec();
    r.truncate(10);
    r.extend_from_slice(&(params.len() as u32).to_be_bytes());
    r.extend_from_slice(params);
    r.extend_from_slice(&auth);
}

#[test]
fn hostile_nv_answers_are_refused() {
    const NV_READ: u32 = 0x14E;
    const NV_READ_PUBLIC: u32 = 0x169;
    let swtpm = Swtpm::start();
    open(&swtpm).rollback_raise("node:n1", 5).unwrap();
    let through = |port: u16| Tpm::open(&format!("swtpm:host=127.0.0.1,port={port}").parse().unwrap()).unwrap();
    // TPM2_NV_Read answers with a session area: 10 header bytes, the
    // parameter size, the parameters, the session area.
    let cases: [(&str, u32, Tamper); 6] = [
        // A counter read of four bytes, of nine, cut short, with a byte more.
        ("short counter", NV_READ, |r| set_params(r, &[0, 4, 0, 0, 0, 1])),
        ("long counter", NV_READ, |r| set_params(r, &[0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1])),
        ("cut counter", NV_READ, |r| set_params(r, &[0, 8, 0, 0, 0, 0, 0])),
        ("trailing byte", NV_READ, |r| set_params(r, &[0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0])),
        // NV_ReadPublic (no sessions): the public area made to look like an
        // ordinary index (the type field, bits 4-7 of the attributes' last
        // byte), the name left as it was; and the public area cut.
        ("ordinary public", NV_READ_PUBLIC, |r| r[21] &= 0x0F),
        ("cut public", NV_READ_PUBLIC, |r| r.truncate(20)),
    ];
    for (what, code, tamper) in cases {
        let port = hostile(swtpm.port, code, tamper);
        let err = through(port).rollback_floor("node:n1", true).unwrap_err();
        let want = if code == NV_READ { "TPM2_NV_Read" } else { "TPM2_NV_ReadPublic" };
        assert!(
            matches!(&err, NvError::Tpm(stateless_keys::tpm::TpmError::Malformed(c)) if *c == want),
            "{what}: {err:?}"
        );
        assert_eq!(err.to_string(), format!("{want}: malformed TPM response"), "{what}");
    }
    // Nothing was defined or raised on the way: the floor is as it was.
    assert_eq!(open(&swtpm).rollback_floor("node:n1", false).unwrap().unwrap().generation, 5);
}

#[test]
fn an_owner_password_stops_new_counters_but_not_existing_ones() {
    let swtpm = Swtpm::start();
    open(&swtpm).rollback_raise("node:n1", 2).unwrap();
    assert!(tool(&swtpm, &["tpm2_changeauth", "-c", "owner", "site-secret"]));
    let mut tpm = open(&swtpm);
    let err = tpm.rollback_floor("group:new", true).unwrap_err();
    assert!(matches!(err, NvError::OwnerAuth { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the TPM's owner hierarchy has a password, so the rollback counter of group:new cannot be created (see docs/keys.md)"
    );
    // The counter made before is the index's own: read and raised as ever.
    assert_eq!(tpm.rollback_raise("node:n1", 3).unwrap(), Raised::To(3));
}
