//! The loader's TPM source with signed PCR policies, end to end: the loader
//! binary fetches an encrypted bundle from nginx on 127.0.0.1 and unseals
//! its key in swtpm with a signed policy found beside the sealed key
//! (`<sealed dir>/policies/*.signed`, `/etc/stateless/tpm/policies` in the
//! boot image). A PCR change is answered by a new signed policy, not by a
//! reseal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::fs;
use std::process::Command;

use stateless_bundle::Scope;
use stateless_keys::sealed::Bank;
use stateless_keys::tpm::Tpm;
use stateless_keys::tpm::policy::{PolicySigningKey, SignedPolicy};
use support::swtpm::Swtpm;
use support::{Nginx, Node, Site};

#[test]
fn a_pcr_change_is_answered_by_a_new_signed_policy() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, Scope::Node("node42".into()), &[("etc/motd", b"keyed\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let swtpm = Swtpm::start();
    let tpm = || Tpm::open(&swtpm.selector().parse().unwrap()).unwrap();
    let sealed_dir = node.dir.path().join("tpm");
    let policies = sealed_dir.join("policies");
    fs::create_dir_all(&policies).unwrap();
    let signer = PolicySigningKey::generate().unwrap();
    let sealed = tpm().seal_authorized(&site.key, &signer.public()).unwrap();
    fs::write(sealed_dir.join("node42.sealed"), sealed.to_text()).unwrap();
    let sign = |name: &str| {
        let values = tpm().pcr_read(Bank::Sha256, &[7, 9]).unwrap();
        fs::write(policies.join(name), SignedPolicy::sign(&signer, Bank::Sha256, values).unwrap().to_text()).unwrap();
    };

    let cmdline = format!(
        "rd.stateless.server=http://127.0.0.1:{} rd.stateless.node=node42 rd.stateless.timeout=3 \
         rd.stateless.key=tpm rd.stateless.tpm={}",
        nginx.port,
        swtpm.selector()
    );
    let boot = || {
        node.fresh_sysroot();
        let run = node.dir.path().join("run");
        let out = Command::new(env!("CARGO_BIN_EXE_stateless-loader"))
            .arg("--cmdline")
            .arg(&cmdline)
            .arg("--sysroot")
            .arg(node.sysroot())
            .arg("--run-dir")
            .arg(&run)
            .arg("--sealed-dir")
            .arg(&sealed_dir)
            .env("STATELESS_LOG_STDERR", "1")
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };

    // No signed policy yet: the key stays sealed, and the console says why.
    let (code, err) = boot();
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("no signed policy was found"), "{err}");

    // The policy for this boot chain: applied.
    sign("1-old.signed");
    let (code, err) = boot();
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("keyed\n"));

    // A kernel update moves PCR 9: refused, naming the policy and the PCR.
    tpm().pcr_extend(9, Bank::Sha256, &[0x5a; 32]).unwrap();
    let (code, err) = boot();
    assert_eq!(code, 10, "{err}");
    let want = format!(
        "TPM: key {}: no signed policy lets the key unseal: 1-old.signed: PCR 9 (sha256) differs",
        site.key.id().short()
    );
    assert!(err.contains(&want), "{err}");
    assert_eq!(node.read("etc/motd"), None);

    // The update ships a new signed policy beside the old one; the sealed
    // file is the same.
    sign("2-new.signed");
    let (code, err) = boot();
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("keyed\n"));
}
