//! Signed PCR policies (TPM2_PolicyAuthorize) against swtpm on 127.0.0.1: a
//! key sealed under a policy key unseals with any PCR policy that key
//! signed, and a PCR change is answered by signing a new policy, not by
//! resealing. tpm2-tools checks the same digests, names and signatures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "../../tests/support/swtpm.rs"]
mod swtpm;

use std::fs;
use std::path::Path;
use std::process::Command;

use stateless_bundle::Key;
use stateless_bundle::key::hex_encode;
use stateless_keys::sealed::{Bank, SealedKey};
use stateless_keys::tpm::Tpm;
use stateless_keys::tpm::policy::{PolicySigningKey, SignedPolicy, policy_authorize_digest};
use stateless_keys::{KeySource, Lookup, TpmSource};
use swtpm::Swtpm;

fn open(swtpm: &Swtpm) -> Tpm {
    Tpm::open(&swtpm.selector().parse().unwrap()).unwrap()
}

/// Signs a policy for the current values of `pcrs`.
fn sign_current(tpm: &mut Tpm, key: &PolicySigningKey, pcrs: &[u8]) -> SignedPolicy {
    SignedPolicy::sign(key, Bank::Sha256, tpm.pcr_read(Bank::Sha256, pcrs).unwrap()).unwrap()
}

fn labelled(list: &[(&str, &SignedPolicy)]) -> Vec<(String, SignedPolicy)> {
    list.iter().map(|(l, p)| ((*l).to_owned(), (*p).clone())).collect()
}

#[test]
fn a_new_signed_policy_replaces_a_reseal() {
    let swtpm = Swtpm::start();
    let mut tpm = open(&swtpm);
    let key = Key::generate().unwrap();
    let signer = PolicySigningKey::generate().unwrap();
    let sealed = tpm.seal_authorized(&key, &signer.public()).unwrap();
    // The file round-trips as a v2 sealed key.
    assert_eq!(SealedKey::parse(sealed.to_text().as_bytes()).unwrap(), sealed);
    assert_eq!(sealed.policy, policy_authorize_digest(&signer.public().name()));

    // No policy at all: refused, saying what is missing.
    let err = tpm.unseal(&sealed).unwrap_err().to_string();
    assert!(err.contains("no signed policy was found"), "{err}");

    // A policy for the current PCRs 7 and 9: unseals.
    let old = sign_current(&mut tpm, &signer, &[7, 9]);
    assert_eq!(tpm.unseal_with(&sealed, &labelled(&[("old.signed", &old)])).unwrap().id(), key.id());

    // PCR 9 moves (a kernel update): the old policy is refused, by name.
    tpm.pcr_extend(9, Bank::Sha256, &[0x42; 32]).unwrap();
    let err = tpm.unseal_with(&sealed, &labelled(&[("old.signed", &old)])).unwrap_err();
    assert_eq!(err.to_string(), "no signed policy lets the key unseal: old.signed: PCR 9 (sha256) differs");

    // A new policy for the new values unseals the same sealed object, old
    // and new side by side (both ship until every node has rebooted).
    let new = sign_current(&mut tpm, &signer, &[7, 9]);
    let got = tpm.unseal_with(&sealed, &labelled(&[("old.signed", &old), ("new.signed", &new)])).unwrap();
    assert_eq!(got.id(), key.id());
    // Tried and refused, tried and unsealed, again and again: every object
    // and session is flushed (swtpm has no resource manager and three
    // object slots, so a leak would fail here).
    for _ in 0..5 {
        let both = labelled(&[("old.signed", &old), ("new.signed", &new)]);
        assert_eq!(tpm.unseal_with(&sealed, &both).unwrap().id(), key.id());
    }

    // A policy for a bank this TPM may not keep is one reason among others,
    // not the end of the search.
    let sha384 = SignedPolicy::sign(&signer, Bank::Sha384, vec![(7, vec![1; 48])]).unwrap();
    let both = labelled(&[("a384.signed", &sha384), ("new.signed", &new)]);
    assert_eq!(tpm.unseal_with(&sealed, &both).unwrap().id(), key.id());
    let err = tpm.unseal_with(&sealed, &labelled(&[("a384.signed", &sha384)])).unwrap_err().to_string();
    assert!(err.starts_with("no signed policy lets the key unseal: a384.signed: "), "{err}");

    // A policy for the right PCRs signed by another key: refused.
    let stranger = PolicySigningKey::generate().unwrap();
    let foreign = sign_current(&mut tpm, &stranger, &[7, 9]);
    let err = tpm.unseal_with(&sealed, &labelled(&[("foreign.signed", &foreign)])).unwrap_err().to_string();
    assert_eq!(err, "no signed policy lets the key unseal: foreign.signed: signed by another policy key");
    // ... even when it claims our key's name: the signature does not verify.
    let forged = SignedPolicy { key_name: signer.public().name(), ..foreign.clone() };
    let err = tpm.unseal_with(&sealed, &labelled(&[("forged.signed", &forged)])).unwrap_err().to_string();
    assert!(err.contains("forged.signed: the signature does not verify"), "{err}");
}

#[test]
fn the_tpm_refuses_a_policy_key_the_object_was_not_sealed_under() {
    // The loader's own checks only make the error line: a policy they pass
    // but the object does not accept is refused by the TPM itself.
    let swtpm = Swtpm::start();
    let mut tpm = open(&swtpm);
    let key = Key::generate().unwrap();
    let signer = PolicySigningKey::generate().unwrap();
    let stranger = PolicySigningKey::generate().unwrap();
    let sealed = tpm.seal_authorized(&key, &signer.public()).unwrap();
    // A sealed-key file edited to name the stranger's key (its policy line
    // recomputed, so it parses): the TPM's object still has the signer's
    // authPolicy, and the stranger's perfectly valid policy does not open it.
    let edited = SealedKey {
        policy_key: Some(stranger.public()),
        policy: policy_authorize_digest(&stranger.public().name()),
        ..sealed.clone()
    };
    let p = sign_current(&mut tpm, &stranger, &[7]);
    // Several times: a refusal by the TPM leaves nothing loaded behind.
    for _ in 0..4 {
        let err = tpm.unseal_with(&edited, &labelled(&[("s.signed", &p)])).unwrap_err().to_string();
        assert!(err.contains("s.signed: TPM2_Unseal: TPM_RC_POLICY_FAIL"), "{err}");
    }
    // The real one still works.
    let good = sign_current(&mut tpm, &signer, &[7]);
    assert_eq!(tpm.unseal_with(&sealed, &labelled(&[("g.signed", &good)])).unwrap().id(), key.id());
}

#[test]
fn the_key_source_reads_signed_policies_beside_the_sealed_keys() {
    let swtpm = Swtpm::start();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("tpm");
    fs::create_dir_all(dir.join("policies")).unwrap();
    let key = Key::generate().unwrap();
    let signer = PolicySigningKey::generate().unwrap();
    let sealed = open(&swtpm).seal_authorized(&key, &signer.public()).unwrap();
    fs::write(dir.join(format!("{}.sealed", key.id())), sealed.to_text()).unwrap();
    let src = TpmSource { dir: dir.clone(), selector: swtpm.selector().parse().unwrap() };

    // No policy yet: the error says so.
    let err = src.lookup(key.id()).unwrap_err().to_string();
    assert!(err.contains("no signed policy was found"), "{err}");

    // A tampered policy file (one PCR value changed and the digest line
    // recomputed would need the key; here only the value changes): refused
    // with a line naming the file.
    let policy = sign_current(&mut open(&swtpm), &signer, &[7]);
    let text = policy.to_text();
    let value = hex_encode(&policy.pcrs[0].1);
    let flipped = format!("{}{}", if value.starts_with('0') { "1" } else { "0" }, &value[1..]);
    fs::write(dir.join("policies/a-tampered.signed"), text.replace(&value, &flipped)).unwrap();
    let err = src.lookup(key.id()).unwrap_err().to_string();
    assert!(
        err.contains("a-tampered.signed: the policy digest does not match the PCR values (file edited or corrupt)"),
        "{err}"
    );

    // The good one beside it: found.
    fs::write(dir.join("policies/b-good.signed"), &text).unwrap();
    match src.lookup(key.id()).unwrap() {
        Lookup::Found(k) => assert_eq!(k.id(), key.id()),
        Lookup::Offered(_) => panic!("not found"),
    }
}

fn tpm2(swtpm: &Swtpm, dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\nexport TPM2TOOLS_TCTI={}\n{script}", swtpm.selector()))
        .current_dir(dir)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "tpm2-tools failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tpm2_tools_agree_on_name_signature_digest_and_unseal() {
    let swtpm = Swtpm::start();
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let key = Key::generate().unwrap();
    let signer = PolicySigningKey::generate().unwrap();
    let public = signer.public();
    let sealed = open(&swtpm).seal_authorized(&key, &public).unwrap();
    let policy = sign_current(&mut open(&swtpm), &signer, &[7, 9]);

    // The policy key as a TPM2B_PUBLIC, the signed digest, the signature
    // (TPMT_SIGNATURE) and the sealed object's blobs, as tpm2-tools reads them.
    let area = public.public_area();
    let mut tpm2b = (area.len() as u16).to_be_bytes().to_vec();
    tpm2b.extend_from_slice(&area);
    fs::write(p.join("policykey.pub"), &tpm2b).unwrap();
    fs::write(p.join("approved.dig"), policy.policy).unwrap();
    fs::write(p.join("sig.bin"), &policy.signature).unwrap();
    fs::write(p.join("obj.pub"), &sealed.public).unwrap();
    fs::write(p.join("obj.priv"), &sealed.private).unwrap();

    // swtpm has no resource manager: transient objects are flushed between
    // tools. The policy session of the unseal is kept (tpm2_flushcontext -t
    // flushes objects only).
    tpm2(
        &swtpm,
        p,
        "tpm2_loadexternal -Q -C o -u policykey.pub -c pk.ctx -n pk.name
tpm2_verifysignature -Q -c pk.ctx -g sha256 -m approved.dig -s sig.bin -t ticket.bin
tpm2_flushcontext -t
tpm2_startauthsession -S trial.ctx
tpm2_policyauthorize -Q -S trial.ctx -L authorize.dig -i approved.dig -n pk.name
tpm2_flushcontext trial.ctx
tpm2_pcrread -Q sha256:7,9 -o pcrs.bin
tpm2_startauthsession -S trial.ctx
tpm2_policypcr -Q -S trial.ctx -l sha256:7,9 -f pcrs.bin -L pcr.dig
tpm2_flushcontext trial.ctx
",
    );
    // The name the TPM gives our public area is the one we pin.
    assert_eq!(fs::read(p.join("pk.name")).unwrap(), public.name());
    // tpm2_policyauthorize computes the object's authPolicy we sealed with.
    assert_eq!(fs::read(p.join("authorize.dig")).unwrap(), sealed.policy);
    // tpm2_policypcr computes the PolicyPCR digest we signed.
    assert_eq!(fs::read(p.join("pcr.dig")).unwrap(), policy.policy);

    // And tpm2-tools unseal our sealed object with our signed policy: the
    // whole TPM2_PolicyAuthorize flow, done by the reference tools.
    tpm2(
        &swtpm,
        p,
        "tpm2_createprimary -Q -C o -g sha256 -G ecc256:aes128cfb \\
  -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt' -c srk.ctx
tpm2_load -Q -C srk.ctx -u obj.pub -r obj.priv -c obj.ctx
tpm2_flushcontext -t
tpm2_loadexternal -Q -C o -u policykey.pub -c pk.ctx -n pk.name
tpm2_verifysignature -Q -c pk.ctx -g sha256 -m approved.dig -s sig.bin -t ticket.bin
tpm2_flushcontext -t
tpm2_startauthsession --policy-session -S s.ctx
tpm2_policypcr -Q -S s.ctx -l sha256:7,9
tpm2_policyauthorize -Q -S s.ctx -i approved.dig -n pk.name -t ticket.bin
tpm2_unseal -c obj.ctx -p session:s.ctx -o unsealed.bin
tpm2_flushcontext s.ctx
",
    );
    assert_eq!(fs::read(p.join("unsealed.bin")).unwrap(), key.as_bytes());
}
