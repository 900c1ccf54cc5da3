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

/// The server publishes signed policies (`v1/default/tpm-policies`,
/// `v1/nodes/NODE/tpm-policies`, each several signed policies in one file);
/// the loader uses them after the boot image's and keeps them on the cache
/// disk for a boot that reaches no server. A policy of another key, or a
/// malformed entry, is named and does not stop the others.
#[test]
fn signed_policies_come_from_the_server_then_the_cache_disk() {
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
    let stranger = PolicySigningKey::generate().unwrap();
    let sealed = tpm().seal_authorized(&site.key, &signer.public()).unwrap();
    fs::write(sealed_dir.join("node42.sealed"), sealed.to_text()).unwrap();
    let signed = |key: &PolicySigningKey| {
        let values = tpm().pcr_read(Bank::Sha256, &[7, 9]).unwrap();
        SignedPolicy::sign(key, Bank::Sha256, values).unwrap().to_text()
    };
    // The boot image's policy is for PCR values that no longer hold.
    fs::write(policies.join("1-old.signed"), signed(&signer)).unwrap();
    tpm().pcr_extend(9, Bank::Sha256, &[0x5a; 32]).unwrap();

    let cmdline = format!(
        "rd.stateless.server=http://127.0.0.1:{} rd.stateless.node=node42 rd.stateless.timeout=3 \
         rd.stateless.key=tpm rd.stateless.tpm={}",
        nginx.port,
        swtpm.selector()
    );
    let sealed_arg = sealed_dir.to_str().unwrap().to_owned();
    let boot = || {
        node.fresh_sysroot();
        let (code, err, _) = node.boot_args(&cmdline, true, &[], &["--sealed-dir", &sealed_arg]);
        (code, err)
    };
    let cached = node.dir.path().join("cache/tpm/policies");

    // The server has only a policy of another key (and a malformed one):
    // refused, each named.
    let broken = signed(&signer).replace("bank sha256", "bank md5");
    site.put("v1/default/tpm-policies", format!("{}{broken}", signed(&stranger)).as_bytes());
    let (code, err) = boot();
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("1-old.signed: PCR 9 (sha256) differs"), "{err}");
    assert!(err.contains("default.policies #1: signed by another policy key"), "{err}");
    assert!(err.contains("default.policies #2: line"), "{err}");
    assert_eq!(node.read("etc/motd"), None);

    // The node's list has the policy for the PCRs as they are now: the
    // other ones do not stop it.
    site.put("v1/nodes/node42/tpm-policies", signed(&signer).as_bytes());
    let (code, err) = boot();
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("keyed\n"));
    assert!(cached.join("node.policies").is_file());
    assert!(cached.join("default.policies").is_file());

    // The server is down: the cached bundle opens with the cached policy.
    drop(nginx);
    let (code, err) = boot();
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("keyed\n"));
    assert!(err.contains("cache"), "{err}");

    // Without that copy the same offline boot cannot open it.
    fs::remove_dir_all(&cached).unwrap();
    let (code, err) = boot();
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("1-old.signed: PCR 9 (sha256) differs"), "{err}");
    assert_eq!(node.read("etc/motd"), None);
}

/// A server list that is not one is one warning, and the copy kept on the
/// cache disk stays in use; a 404 withdraws the copy.
#[test]
fn a_malformed_server_list_keeps_the_cached_copy_and_a_404_removes_it() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, Scope::Node("node42".into()), &[("etc/motd", b"keyed\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let swtpm = Swtpm::start();
    let tpm = || Tpm::open(&swtpm.selector().parse().unwrap()).unwrap();
    let sealed_dir = node.dir.path().join("tpm");
    fs::create_dir_all(&sealed_dir).unwrap();
    let signer = PolicySigningKey::generate().unwrap();
    let sealed = tpm().seal_authorized(&site.key, &signer.public()).unwrap();
    fs::write(sealed_dir.join("node42.sealed"), sealed.to_text()).unwrap();
    let values = tpm().pcr_read(Bank::Sha256, &[7]).unwrap();
    let good = SignedPolicy::sign(&signer, Bank::Sha256, values).unwrap().to_text();
    let cmdline = format!(
        "rd.stateless.server=http://127.0.0.1:{} rd.stateless.node=node42 rd.stateless.timeout=3 \
         rd.stateless.key=tpm rd.stateless.tpm={}",
        nginx.port,
        swtpm.selector()
    );
    let sealed_arg = sealed_dir.to_str().unwrap().to_owned();
    let boot = || {
        node.fresh_sysroot();
        let (code, err, _) = node.boot_args(&cmdline, true, &[], &["--sealed-dir", &sealed_arg]);
        (code, err)
    };
    let cached = node.dir.path().join("cache/tpm/policies/default.policies");

    site.put("v1/default/tpm-policies", good.as_bytes());
    let (code, err) = boot();
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read_to_string(&cached).unwrap(), good);

    site.put("v1/default/tpm-policies", b"<html>not found</html>\n");
    let (code, err) = boot();
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("tpm-policies refused: not a signed policy list").count(), 1, "{err}");
    assert_eq!(fs::read_to_string(&cached).unwrap(), good);

    site.put("v1/default/tpm-policies", &vec![b'#'; 300 * 1024]);
    let (code, err) = boot();
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("tpm-policies refused: response larger than").count(), 1, "{err}");

    fs::remove_file(site.www().join("v1/default/tpm-policies")).unwrap();
    let (code, err) = boot();
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("no signed policy was found"), "{err}");
    assert!(!cached.exists());
}

/// With the lock: the served policy covers PCR 15 at its pre-lock value, so
/// each boot unseals once and closes the key; after a reboot, with the
/// server down, the copy on the cache disk opens it again.
#[test]
fn a_served_policy_with_the_lock_opens_the_key_once_per_boot_also_from_the_cache() {
    use stateless_keys::tpm::lock::{LOCK_PCR, boot_value, with_lock};
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, Scope::Node("node42".into()), &[("etc/motd", b"keyed\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let swtpm = Swtpm::start();
    let tpm = || Tpm::open(&swtpm.selector().parse().unwrap()).unwrap();
    let sealed_dir = node.dir.path().join("tpm");
    fs::create_dir_all(&sealed_dir).unwrap();
    let signer = PolicySigningKey::generate().unwrap();
    let sealed = tpm().seal_authorized(&site.key, &signer.public()).unwrap();
    fs::write(sealed_dir.join("node42.sealed"), sealed.to_text()).unwrap();
    let values = with_lock(tpm().pcr_read(Bank::Sha256, &[7]).unwrap(), boot_value(Bank::Sha256));
    site.put(
        "v1/nodes/node42/tpm-policies",
        SignedPolicy::sign(&signer, Bank::Sha256, values).unwrap().to_text().as_bytes(),
    );
    let cmdline = format!(
        "rd.stateless.server=http://127.0.0.1:{} rd.stateless.node=node42 rd.stateless.timeout=3 \
         rd.stateless.key=tpm rd.stateless.tpm={}",
        nginx.port,
        swtpm.selector()
    );
    let sealed_arg = sealed_dir.to_str().unwrap().to_owned();
    let boot = || {
        node.fresh_sysroot();
        let (code, err, _) = node.boot_args(&cmdline, true, &[], &["--sealed-dir", &sealed_arg]);
        (code, err)
    };
    let pcr15 = || tpm().pcr_read(Bank::Sha256, &[LOCK_PCR]).unwrap()[0].1.clone();

    let (code, err) = boot();
    assert_eq!(code, 0, "{err}");
    assert_ne!(pcr15(), boot_value(Bank::Sha256), "the run closes the key");
    assert!(!err.contains("does not cover PCR 15"), "{err}");

    drop(nginx);
    swtpm.reboot();
    let (code, err) = boot();
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("keyed\n"));
    assert_ne!(pcr15(), boot_value(Bank::Sha256), "closed again");
}
