//! A key sealed with a PIN (`tpm-seal --pin`): its policy ends in
//! TPM2_PolicyAuthValue and the PIN is the object's auth value, so the TPM
//! unseals it only for someone who knows the PIN, on top of the PCRs and
//! the once-per-boot lock. Against swtpm on 127.0.0.1, started by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "../../tests/support/swtpm.rs"]
mod swtpm;

use stateless_bundle::Key;
use stateless_keys::sealed::{Bank, SealedKey};
use stateless_keys::tpm::lock::{boot_value, with_lock};
use stateless_keys::tpm::policy::{PolicySigningKey, SignedPolicy};
use stateless_keys::tpm::{Tpm, TpmError};
use swtpm::Swtpm;

fn open(swtpm: &Swtpm) -> Tpm {
    Tpm::open(&swtpm.selector().parse().unwrap()).unwrap()
}

fn with_pin(swtpm: &Swtpm, pin: Option<&[u8]>) -> Tpm {
    let mut tpm = open(swtpm);
    tpm.set_pin(pin).unwrap();
    tpm
}

#[test]
fn a_pin_sealed_key_unseals_only_with_its_pin() {
    let swtpm = Swtpm::start();
    let key = Key::generate().unwrap();
    let values = with_lock(open(&swtpm).pcr_read(Bank::Sha256, &[7]).unwrap(), boot_value(Bank::Sha256));
    let sealed = with_pin(&swtpm, Some(b"2468")).seal_values(&key, Bank::Sha256, values).unwrap();
    assert!(sealed.needs_pin());
    assert!(sealed.to_text().contains("\nauth pin\n"));
    assert_eq!(SealedKey::parse(sealed.to_text().as_bytes()).unwrap(), sealed);

    let err = open(&swtpm).unseal(&sealed).unwrap_err();
    assert!(matches!(err, TpmError::PinNeeded), "{err:?}");
    assert_eq!(err.to_string(), "the key is sealed with a PIN and none was given");
    let err = with_pin(&swtpm, Some(b"1357")).unseal(&sealed).unwrap_err();
    assert!(matches!(err, TpmError::WrongPin), "{err:?}");
    assert!(err.to_string().starts_with("wrong PIN"), "{err}");
    assert_eq!(with_pin(&swtpm, Some(b"2468")).unseal(&sealed).unwrap().as_bytes(), key.as_bytes());
    // The TPM enforces it: a file edited to drop the PIN fails in the TPM.
    let mut edited = sealed.clone();
    edited.policy = edited.base_policy();
    assert!(!edited.needs_pin());
    let err = open(&swtpm).unseal(&edited).unwrap_err();
    assert!(matches!(err, TpmError::Rc { .. }), "{err:?}");

    // Without a PIN set, nothing changes for keys sealed without one.
    let plain = open(&swtpm).seal(&key, Bank::Sha256, &[7]).unwrap();
    assert!(!plain.needs_pin());
    assert_eq!(with_pin(&swtpm, Some(b"2468")).unseal(&plain).unwrap().id(), key.id());
    assert!(matches!(open(&swtpm).set_pin(Some(&[b'1'; 33])), Err(TpmError::BadPin)));
    assert!(matches!(open(&swtpm).set_pin(Some(b"")), Err(TpmError::BadPin)));
}

#[test]
fn a_pin_works_with_signed_policies() {
    let swtpm = Swtpm::start();
    let key = Key::generate().unwrap();
    let signer = PolicySigningKey::generate().unwrap();
    let sealed = with_pin(&swtpm, Some(b"2468")).seal_authorized(&key, &signer.public()).unwrap();
    assert!(sealed.needs_pin());
    assert_eq!(SealedKey::parse(sealed.to_text().as_bytes()).unwrap(), sealed);
    let values = open(&swtpm).pcr_read(Bank::Sha256, &[7]).unwrap();
    let policies = vec![("a.signed".to_owned(), SignedPolicy::sign(&signer, Bank::Sha256, values).unwrap())];
    assert!(matches!(open(&swtpm).unseal_with(&sealed, &policies), Err(TpmError::PinNeeded)));
    assert!(matches!(with_pin(&swtpm, Some(b"0000")).unseal_with(&sealed, &policies), Err(TpmError::WrongPin)));
    let got = with_pin(&swtpm, Some(b"2468")).unseal_with(&sealed, &policies).unwrap();
    assert_eq!(got.id(), key.id());
}
