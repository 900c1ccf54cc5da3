//! A sealed key stays sealed after the boot: the TPM key source extends
//! the lock PCR (15) after unsealing, and every policy `tpm-seal` and
//! `tpm sign-policy` make covers that PCR at its boot value. Against swtpm
//! on 127.0.0.1, started by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "../../tests/support/swtpm.rs"]
mod swtpm;

use std::fs;

use stateless_bundle::Key;
use stateless_keys::sealed::{Bank, SealedKey};
use stateless_keys::tpm::lock::{LOCK_PCR, boot_value, locked_value, with_lock};
use stateless_keys::tpm::policy::{PolicySigningKey, SignedPolicy};
use stateless_keys::tpm::source::BootKeys;
use stateless_keys::tpm::{Tpm, TpmError};
use stateless_keys::{KeySource, Lookup, TpmSource};
use swtpm::Swtpm;

fn open(swtpm: &Swtpm) -> Tpm {
    Tpm::open(&swtpm.selector().parse().unwrap()).unwrap()
}

/// Seals `key` as `tpm-seal --pcrs 7` does by default: PCR 7 now, PCR 15 at
/// its boot value.
fn seal_locked(swtpm: &Swtpm, key: &Key) -> SealedKey {
    let mut tpm = open(swtpm);
    let values = tpm.pcr_read(Bank::Sha256, &[7]).unwrap();
    tpm.seal_values(key, Bank::Sha256, with_lock(values, boot_value(Bank::Sha256))).unwrap()
}

fn found(l: Lookup) -> Key {
    match l {
        Lookup::Found(k) => k,
        Lookup::Offered(ids) => panic!("offered {ids:?}"),
    }
}

fn pcr15(swtpm: &Swtpm) -> Vec<u8> {
    open(swtpm).pcr_read(Bank::Sha256, &[LOCK_PCR]).unwrap().remove(0).1
}

#[test]
fn a_key_unseals_once_per_boot() {
    let swtpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate().unwrap();
    let sealed = seal_locked(&swtpm, &key);
    assert_eq!(sealed.pcr_indices(), [7, 15]);
    fs::write(dir.path().join("node.sealed"), sealed.to_text()).unwrap();
    let src = TpmSource { dir: dir.path().to_owned(), selector: swtpm.selector().parse().unwrap() };

    // In the initramfs: unsealed, and PCR 15 extended with the lock event.
    assert_eq!(found(src.lookup(key.id()).unwrap()).as_bytes(), key.as_bytes());
    let boot = boot_value(Bank::Sha256);
    assert_eq!(pcr15(&swtpm), locked_value(Bank::Sha256, &boot).unwrap());

    // After: the same source, a fresh TPM client, refused with one line.
    let err = src.lookup(key.id()).unwrap_err().to_string();
    let want = format!(
        "key {}: PCR 15 (sha256) has moved since this boot's loader unsealed the key: it stays sealed until the next boot (see docs/keys.md)",
        key.id().short()
    );
    assert_eq!(err, want);
    assert!(!err.contains('\n'));
    let err = open(&swtpm).unseal(&sealed).unwrap_err();
    assert!(matches!(err, TpmError::Locked { bank: "sha256" }), "{err:?}");
    // The TPM enforces it, not our reading of the PCRs: a file edited to
    // claim the locked value fails in the TPM (and its policy digest no
    // longer matches the object's, so TPM2_PolicyPCR's result is refused).
    let mut forged = sealed.clone();
    forged.pcrs[1].1 = pcr15(&swtpm);
    forged.policy = stateless_keys::sealed::policy_pcr_digest(Bank::Sha256, &forged.pcrs);
    let err = open(&swtpm).unseal(&forged).unwrap_err();
    assert!(matches!(err, TpmError::Rc { command: "TPM2_Unseal", .. }), "{err:?}");
}

#[test]
fn the_first_lookup_unseals_every_key_of_this_tpm_before_the_lock() {
    let swtpm = Swtpm::start();
    let other_tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let (node, group, stale, foreign) =
        (Key::generate().unwrap(), Key::generate().unwrap(), Key::generate().unwrap(), Key::generate().unwrap());
    fs::write(dir.path().join("1-node.sealed"), seal_locked(&swtpm, &node).to_text()).unwrap();
    fs::write(dir.path().join("2-group.sealed"), seal_locked(&swtpm, &group).to_text()).unwrap();
    // Sealed to a PCR 7 value this TPM no longer holds: does not unseal.
    let mut tpm = open(&swtpm);
    let stale_sealed = tpm.seal_values(&stale, Bank::Sha256, vec![(7, vec![0x77; 32]), (15, vec![0; 32])]).unwrap();
    drop(tpm);
    fs::write(dir.path().join("3-stale.sealed"), stale_sealed.to_text()).unwrap();
    // Another node's key in the same (shared) boot image: never sent here.
    fs::write(dir.path().join("4-foreign.sealed"), seal_locked(&other_tpm, &foreign).to_text()).unwrap();
    let src = TpmSource { dir: dir.path().to_owned(), selector: swtpm.selector().parse().unwrap() };

    // The loader keeps one BootKeys for its run: the group layer's bundle
    // first, then the node's, then the report — one unseal, one lock.
    let mut boot = BootKeys::default();
    assert_eq!(found(src.lookup_for_boot(group.id(), &mut boot).unwrap()).id(), group.id());
    assert!(boot.locked);
    assert_eq!(boot.keys.len(), 2, "node and group unsealed before the lock");
    assert_eq!(boot.failed.len(), 1);
    assert!(boot.failed[0].1.contains("PCR 7 (sha256) differs"), "{:?}", boot.failed);
    assert_eq!(found(src.lookup_for_boot(node.id(), &mut boot).unwrap()).id(), node.id());
    assert_eq!(found(src.lookup_for_boot(group.id(), &mut boot).unwrap()).id(), group.id());
    let err = src.lookup_for_boot(stale.id(), &mut boot).unwrap_err().to_string();
    assert!(err.contains("PCR 7 (sha256) differs"), "{err}");
    // The foreign key was made by another TPM: not unsealed with the rest,
    // and refused when asked for (here already by the closed PCR 15).
    let err = src.lookup_for_boot(foreign.id(), &mut boot).unwrap_err().to_string();
    assert!(err.starts_with(&format!("key {}: ", foreign.id().short())), "{err}");
    assert!(!boot.keys.iter().any(|k| k.id() == foreign.id()));
    assert!(matches!(src.lookup_for_boot(Key::generate().unwrap().id(), &mut boot).unwrap(), Lookup::Offered(_)));

    // Without the loader's BootKeys (root on the running system): closed.
    for k in [&node, &group] {
        let err = src.lookup(k.id()).unwrap_err().to_string();
        assert!(err.contains("PCR 15 (sha256) has moved"), "{err}");
    }
}

#[test]
fn an_old_sealed_file_without_the_lock_pcr_keeps_working_and_stays_open() {
    let swtpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate().unwrap();
    // As sealed before the lock existed: PCR 7 only.
    let sealed = open(&swtpm).seal(&key, Bank::Sha256, &[7]).unwrap();
    fs::write(dir.path().join("old.sealed"), sealed.to_text()).unwrap();
    let src = TpmSource { dir: dir.path().to_owned(), selector: swtpm.selector().parse().unwrap() };
    for _ in 0..2 {
        assert_eq!(found(src.lookup(key.id()).unwrap()).id(), key.id());
    }
    // Nothing to close, so PCR 15 is left alone (another user of it, such
    // as systemd, is not disturbed by a node that did not opt in).
    assert_eq!(pcr15(&swtpm), boot_value(Bank::Sha256));
}

#[test]
fn a_signed_policy_covering_the_lock_pcr_closes_too() {
    let swtpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("policies")).unwrap();
    let key = Key::generate().unwrap();
    let signer = PolicySigningKey::generate().unwrap();
    let sealed = open(&swtpm).seal_authorized(&key, &signer.public()).unwrap();
    fs::write(dir.path().join("node.sealed"), sealed.to_text()).unwrap();
    // As `tpm sign-policy --pcrs 7 --current` signs it: PCR 15 at its boot value.
    let values = with_lock(open(&swtpm).pcr_read(Bank::Sha256, &[7]).unwrap(), boot_value(Bank::Sha256));
    let signed = SignedPolicy::sign(&signer, Bank::Sha256, values).unwrap();
    fs::write(dir.path().join("policies/a.signed"), signed.to_text()).unwrap();
    let src = TpmSource { dir: dir.path().to_owned(), selector: swtpm.selector().parse().unwrap() };
    assert_eq!(found(src.lookup(key.id()).unwrap()).id(), key.id());
    let err = src.lookup(key.id()).unwrap_err().to_string();
    assert!(
        err.contains(
            "no signed policy lets the key unseal: a.signed: PCR 15 (sha256) has moved since this boot's loader unsealed the key"
        ),
        "{err}"
    );
}

#[test]
fn pcr_15_moved_by_something_else_is_named_as_a_difference_not_as_the_lock() {
    let swtpm = Swtpm::start();
    let key = Key::generate().unwrap();
    let sealed = seal_locked(&swtpm, &key);
    // Something other than the loader measures into PCR 15 before it.
    open(&swtpm).pcr_extend(LOCK_PCR, Bank::Sha256, &[0x42; 32]).unwrap();
    let err = open(&swtpm).unseal(&sealed).unwrap_err();
    assert!(matches!(err, TpmError::PcrMismatch { ref pcrs, .. } if pcrs == &[15]), "{err:?}");
    assert!(err.to_string().starts_with("PCR 15 (sha256) differs from the sealed policy"), "{err}");
}
