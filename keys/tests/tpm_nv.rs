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
