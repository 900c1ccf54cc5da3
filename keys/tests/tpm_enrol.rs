//! Zero-touch enrolment against real TPMs: two swtpms on 127.0.0.1. A key
//! wrapped in software for TPM A's storage root key imports and unseals on
//! A, and is refused on B, both by our name check and by the TPM itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "../../tests/support/swtpm.rs"]
mod swtpm;

use stateless_bundle::Key;
use stateless_keys::sealed::Bank;
use stateless_keys::tpm::enrol::ek_hash;
use stateless_keys::tpm::import::{SrkPublic, WrapPolicy, WrappedKey, wrap};
use stateless_keys::tpm::policy::{PolicySigningKey, SignedPolicy};
use stateless_keys::tpm::{Tpm, TpmError};
use swtpm::Swtpm;

fn open(s: &Swtpm) -> Tpm {
    Tpm::open(&s.selector().parse().unwrap()).unwrap()
}

#[test]
fn a_key_wrapped_for_one_tpm_unseals_there_and_nowhere_else() {
    let (a, b) = (Swtpm::start(), Swtpm::start());
    let (mut ta, mut tb) = (open(&a), open(&b));
    let enrol = ta.enrolment().unwrap();
    // The same TPM answers with the same keys every time.
    assert_eq!(ta.enrolment().unwrap(), enrol);
    let other = tb.enrolment().unwrap();
    assert_ne!(ek_hash(&enrol.ek_public), ek_hash(&other.ek_public));
    assert_ne!(enrol.srk_public, other.srk_public);
    assert!(enrol.ek_cert.is_none(), "a bare swtpm has no EK certificate");

    let key = Key::generate().unwrap();
    let srk = SrkPublic::parse(&enrol.srk_public).unwrap();
    let pcr7 = ta.pcr_read(Bank::Sha256, &[7]).unwrap();
    let wrapped = wrap(&key, &srk, &WrapPolicy::Pcrs(Bank::Sha256, pcr7)).unwrap();
    // Through the file format, as the loader gets it.
    let wrapped = WrappedKey::parse(wrapped.to_text().as_bytes()).unwrap();

    let sealed = ta.import(&wrapped).unwrap();
    assert_eq!(ta.unseal(&sealed).unwrap().as_bytes(), key.as_bytes());
    // Imported again (the next boot does it again): the same key.
    for _ in 0..3 {
        let again = ta.import(&wrapped).unwrap();
        assert_eq!(ta.unseal(&again).unwrap().id(), key.id());
    }

    // TPM B: our check names the problem before the TPM is asked.
    let err = tb.import(&wrapped).unwrap_err();
    assert!(matches!(err, TpmError::SrkMismatch), "{err}");
    assert!(err.to_string().contains("another TPM"), "{err}");
    // A file edited to name B's SRK: B's TPM refuses the import itself (the
    // seed decrypts to garbage there, so the outer HMAC does not verify).
    let mut forged = wrapped.clone();
    forged.sealed.parent_name = SrkPublic::parse(&other.srk_public).unwrap().name;
    let err = tb.import(&forged).unwrap_err();
    assert!(matches!(err, TpmError::NotForThisTpm { .. }), "{err}");
    assert!(err.to_string().starts_with("the TPM refused the wrapped key: it was made for another TPM"), "{err}");
    // And A still works afterwards (nothing left loaded on either).
    let s = ta.import(&wrapped).unwrap();
    assert_eq!(ta.unseal(&s).unwrap().id(), key.id());

    // A PCR moves: the imported key stays sealed.
    ta.pcr_extend(7, Bank::Sha256, &[1; 32]).unwrap();
    let sealed = ta.import(&wrapped).unwrap();
    let err = ta.unseal(&sealed).unwrap_err().to_string();
    assert!(err.starts_with("PCR 7 (sha256) differs"), "{err}");
}

#[test]
fn a_wrapped_key_can_unseal_under_signed_policies() {
    let a = Swtpm::start();
    let mut ta = open(&a);
    let key = Key::generate().unwrap();
    let signer = PolicySigningKey::generate().unwrap();
    let srk = ta.srk_public().unwrap();
    let wrapped = wrap(&key, &srk, &WrapPolicy::Authorized(signer.public())).unwrap();
    let sealed = ta.import(&wrapped).unwrap();
    let pcrs = ta.pcr_read(Bank::Sha256, &[7]).unwrap();
    let policy = SignedPolicy::sign(&signer, Bank::Sha256, pcrs).unwrap();
    let got = ta.unseal_with(&sealed, &[("p.signed".into(), policy)]).unwrap();
    assert_eq!(got.id(), key.id());
}

#[test]
fn damaged_wrapped_keys_are_refused_by_the_tpm_without_harm() {
    let a = Swtpm::start();
    let mut ta = open(&a);
    let key = Key::generate().unwrap();
    let srk = ta.srk_public().unwrap();
    let pcr7 = ta.pcr_read(Bank::Sha256, &[7]).unwrap();
    let wrapped = wrap(&key, &srk, &WrapPolicy::Pcrs(Bank::Sha256, pcr7)).unwrap();
    // One flipped bit anywhere in the duplicate or the seed: the TPM
    // refuses (integrity, or a point not on the curve); never a key.
    let dup_len = wrapped.sealed.private.len();
    for i in [2, 3, 10, 40, dup_len - 1] {
        let mut bad = wrapped.clone();
        bad.sealed.private[i] ^= 0x01;
        let err = ta.import(&bad).map(|s| ta.unseal(&s));
        assert!(!matches!(err, Ok(Ok(_))), "duplicate byte {i}");
    }
    for i in [2, 20, 40, 67] {
        let mut bad = wrapped.clone();
        bad.seed[i] ^= 0x01;
        assert!(ta.import(&bad).is_err(), "seed byte {i}");
    }
    // The public area edited (another policy): its name changes, so the HMAC
    // over the name no longer verifies.
    let mut bad = wrapped.clone();
    let n = bad.sealed.public.len();
    bad.sealed.public[n - 40] ^= 0x01;
    assert!(ta.import(&bad).is_err());
    let s = ta.import(&wrapped).unwrap();
    assert_eq!(ta.unseal(&s).unwrap().id(), key.id());
}

/// The SRK is bound to the EK: the inner wrapper's key comes only from the
/// TPM that holds the EK, with the SRK the credential names loaded.
#[test]
fn a_bound_key_needs_the_tpm_that_holds_the_ek() {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use stateless_keys::tpm::import::wrap_bound;
    use stateless_keys::tpm::salt;

    let (a, b) = (Swtpm::start(), Swtpm::start());
    let (mut ta, mut tb) = (open(&a), open(&b));
    let (ea, eb) = (ta.enrolment().unwrap(), tb.enrolment().unwrap());
    let key = Key::generate().unwrap();
    let srk_a = SrkPublic::parse(&ea.srk_public).unwrap();
    let policy = WrapPolicy::Pcrs(Bank::Sha256, ta.pcr_read(Bank::Sha256, &[7]).unwrap());

    // The honest case: A's EK and A's SRK.
    let bound = wrap_bound(&key, &srk_a, &ea.ek_public, &policy).unwrap();
    let bound = WrappedKey::parse(bound.to_text().as_bytes()).unwrap();
    assert!(bound.credential.is_some());
    let sealed = ta.import(&bound).unwrap();
    assert_eq!(ta.unseal(&sealed).unwrap().as_bytes(), key.as_bytes());
    for _ in 0..3 {
        let s = ta.import(&bound).unwrap();
        assert_eq!(ta.unseal(&s).unwrap().id(), key.id());
    }

    // The attack: a genuine EK (A's) sent with an SRK whose private key the
    // sender holds in software.
    let fake = p256::SecretKey::from_slice(&[9u8; 32]).unwrap();
    let p = fake.public_key().to_encoded_point(false);
    let fake_srk = SrkPublic::from_point(p.x().unwrap(), p.y().unwrap()).unwrap();
    let w = wrap_bound(&key, &fake_srk, &ea.ek_public, &policy).unwrap();
    // The sender removes the outer wrapper with its SRK key ...
    let eph = p256::PublicKey::from_sec1_bytes(&[&[0x04][..], &w.seed[2..34], &w.seed[36..68]].concat()).unwrap();
    let z = p256::ecdh::diffie_hellman(fake.to_nonzero_scalar(), eph.as_affine());
    let seed = salt::kdfe(z.raw_secret_bytes(), "DUPLICATE", &w.seed[2..34], &fake_srk.x);
    let name = stateless_keys::tpm::import::name_of(&w.sealed.public[2..]);
    let mut inner = w.sealed.private[2 + 34..].to_vec();
    salt::cfb_decrypt(&salt::kdfa(&seed, "STORAGE", &name, &[], 128), &[0; 16], &mut inner).unwrap();
    // ... and finds the inner wrapper, not the key.
    assert!(!inner.windows(32).any(|win| win == key.as_bytes()), "the key is readable without the EK's TPM");
    // A's TPM will not give the inner key for that SRK name: the credential
    // is bound to the fake SRK, and A's loaded SRK has another name.
    let mut w_on_a = w.clone();
    w_on_a.sealed.parent_name = srk_a.name.clone();
    let err = ta.import(&w_on_a).unwrap_err();
    assert!(matches!(err, TpmError::NotForThisTpm { .. }), "{err}");

    // A credential made for B's EK, bound to A's SRK: A's TPM refuses it.
    let for_b = wrap_bound(&key, &srk_a, &eb.ek_public, &policy).unwrap();
    let err = ta.import(&for_b).unwrap_err();
    assert!(matches!(err, TpmError::NotForThisTpm { .. }), "{err}");
    // Everything was flushed: the honest blob still imports.
    let s = ta.import(&bound).unwrap();
    assert_eq!(ta.unseal(&s).unwrap().id(), key.id());
}

fn tpm2(swtpm: &Swtpm, dir: &std::path::Path, script: &str) -> String {
    let out = std::process::Command::new("bash")
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

/// tpm2-tools take our wrapped key apart the same way the loader does:
/// `tpm2_activatecredential` with the EK and our SRK gives the inner key,
/// `tpm2_import` accepts the duplicate with it, and `tpm2_unseal` under the
/// PCR policy gives the key.
#[test]
fn tpm2_tools_activate_import_and_unseal_a_wrapped_key() {
    use stateless_keys::tpm::import::wrap_bound;
    let a = Swtpm::start();
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let mut ta = open(&a);
    let e = ta.enrolment().unwrap();
    let key = Key::generate().unwrap();
    let srk = SrkPublic::parse(&e.srk_public).unwrap();
    let policy = WrapPolicy::Pcrs(Bank::Sha256, ta.pcr_read(Bank::Sha256, &[7]).unwrap());
    let w = wrap_bound(&key, &srk, &e.ek_public, &policy).unwrap();
    drop(ta);
    let c = w.credential.clone().unwrap();
    // tpm2_makecredential's file: magic, version, TPM2B_ID_OBJECT,
    // TPM2B_ENCRYPTED_SECRET.
    let mut cred = vec![0xBA, 0xDC, 0xC0, 0xDE, 0, 0, 0, 1];
    cred.extend_from_slice(&c.blob);
    cred.extend_from_slice(&(c.secret.len() as u16).to_be_bytes());
    cred.extend_from_slice(&c.secret);
    std::fs::write(p.join("cred.bin"), cred).unwrap();
    std::fs::write(p.join("obj.pub"), &w.sealed.public).unwrap();
    std::fs::write(p.join("obj.dup"), &w.sealed.private).unwrap();
    let mut seed = (w.seed.len() as u16).to_be_bytes().to_vec();
    seed.extend_from_slice(&w.seed);
    std::fs::write(p.join("obj.seed"), seed).unwrap();
    // swtpm has no resource manager: transient objects are flushed between
    // tools.
    let out = tpm2(
        &a,
        p,
        "tpm2_createprimary -Q -C o -g sha256 -G ecc256:aes128cfb \
           -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt' -c srk.ctx
         tpm2_flushcontext -t
         tpm2_createek -Q -c ek.ctx -G rsa -u ek.pub
         tpm2_flushcontext -t
         tpm2_startauthsession --policy-session -S s.ctx
         tpm2_policysecret -Q -S s.ctx -c e
         tpm2_activatecredential -Q -c srk.ctx -C ek.ctx -i cred.bin -o inner.key -P session:s.ctx
         tpm2_flushcontext s.ctx
         tpm2_flushcontext -t
         tpm2_import -Q -C srk.ctx -u obj.pub -i obj.dup -s obj.seed -k inner.key -r obj.priv
         tpm2_flushcontext -t
         tpm2_load -Q -C srk.ctx -u obj.pub -r obj.priv -c obj.ctx
         tpm2_flushcontext -t
         tpm2_startauthsession --policy-session -S u.ctx
         tpm2_policypcr -Q -S u.ctx -l sha256:7
         tpm2_unseal -c obj.ctx -p session:u.ctx | xxd -p -c 64",
    );
    assert_eq!(out.trim(), stateless_bundle::key::hex_encode(key.as_bytes()));
}
