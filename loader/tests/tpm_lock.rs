//! The loader binary closes its TPM-sealed keys for the rest of the boot
//! (PCR 15, `stateless_keys::tpm::lock`): a stack of three layers sealed
//! with three different keys, all sealed in swtpm, applies once; run again
//! on the same boot (same swtpm state: root on the running system), the
//! keys stay sealed; and a run that fails before it unseals anything closes
//! them too, so the emergency shell cannot unseal them either. A key sealed
//! with a PIN is asked for on the console (`--console`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::fs;
use std::path::Path;

use stateless_bundle::{Key, Scope};
use stateless_keys::sealed::Bank;
use stateless_keys::tpm::Tpm;
use stateless_keys::tpm::lock::{LOCK_PCR, boot_value, locked_value, with_lock};
use support::swtpm::Swtpm;
use support::{Nginx, Node, Site};

fn tpm(swtpm: &Swtpm) -> Tpm {
    Tpm::open(&swtpm.selector().parse().unwrap()).unwrap()
}

/// Seals `keys` into `dir` as `statelessctl key tpm-seal --pcrs 7` does.
fn seal_all(swtpm: &Swtpm, dir: &Path, keys: &[(&str, &Key)]) {
    fs::create_dir_all(dir).unwrap();
    for (name, key) in keys {
        let values = with_lock(tpm(swtpm).pcr_read(Bank::Sha256, &[7]).unwrap(), boot_value(Bank::Sha256));
        let sealed = tpm(swtpm).seal_values(key, Bank::Sha256, values).unwrap();
        fs::write(dir.join(format!("{name}.sealed")), sealed.to_text()).unwrap();
    }
}

fn pcr15(swtpm: &Swtpm) -> Vec<u8> {
    tpm(swtpm).pcr_read(Bank::Sha256, &[LOCK_PCR]).unwrap().remove(0).1
}

fn boot(node: &Node, port: u16, swtpm: &Swtpm, sealed: &Path) -> (i32, String) {
    node.fresh_sysroot();
    let cmdline = format!(
        "rd.stateless.server=http://127.0.0.1:{port} rd.stateless.node=node42 rd.stateless.group=rack7 \
         rd.stateless.timeout=3 rd.stateless.key=tpm rd.stateless.tpm={}",
        swtpm.selector()
    );
    let (code, err, _) = node.boot_args(&cmdline, false, &[], &["--sealed-dir", sealed.to_str().unwrap()]);
    (code, err)
}

#[test]
fn the_loader_unseals_its_keys_once_per_boot() {
    let site = Site::new();
    let (default, group, own) = (Key::generate().unwrap(), Key::generate().unwrap(), Key::generate().unwrap());
    let layer = |rel: &str, generation: u64, scope: Scope, toml: &str, key: &Key, motd: &[u8]| {
        let files: [(&str, &[u8]); 2] = [(".stateless/layer.toml", toml.as_bytes()), ("etc/motd", motd)];
        site.put(rel, &site.make_sealed(generation, scope, &files, &[], Some(key)));
    };
    layer("v1/default/bundle", 1, Scope::Any, "kind = \"default\"\n", &default, b"default\n");
    layer(
        "v1/groups/rack7/bundle",
        2,
        Scope::Group("rack7".into()),
        "kind = \"group\"\nname = \"rack7\"\n",
        &group,
        b"rack7\n",
    );
    layer(
        "v1/nodes/node42/bundle",
        3,
        Scope::Node("node42".into()),
        "kind = \"node\"\nname = \"node42\"\ngroups = [\"rack7\"]\n",
        &own,
        b"node42\n",
    );
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let swtpm = Swtpm::start();
    let sealed = node.dir.path().join("tpm");
    seal_all(&swtpm, &sealed, &[("1-default", &default), ("2-group", &group), ("3-node", &own)]);

    // In the initramfs: all three keys unseal (before the one extend), the
    // stack applies, and PCR 15 is closed.
    let (code, err) = boot(&node, nginx.port, &swtpm, &sealed);
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("node42\n"));
    assert!(err.contains("applied a stack of 3 layers"), "{err}");
    assert!(!err.contains("can be unsealed again"), "{err}");
    // The boot report, after the stack, signs with the node key this run
    // unsealed before the lock (kept in the loader, not unsealed again).
    assert!(!err.contains("none of the node's keys was found"), "{err}");
    assert_eq!(pcr15(&swtpm), locked_value(Bank::Sha256, &boot_value(Bank::Sha256)).unwrap());

    // The same boot, the loader run again (root on the running system):
    // nothing unseals, and the console line says why (for the node layer,
    // which the loader probes first).
    let (code, err) = boot(&node, nginx.port, &swtpm, &sealed);
    assert_ne!(code, 0, "{err}");
    let want = format!(
        "TPM: key {}: PCR 15 (sha256) has moved since this boot's loader unsealed the key: it stays sealed until the next boot",
        own.id().short()
    );
    assert!(err.contains(&want), "{err}");
    assert_eq!(node.read("etc/motd"), None);
}

#[test]
fn a_run_that_unseals_nothing_closes_the_keys_too() {
    let node = Node::new();
    let swtpm = Swtpm::start();
    let key = Key::generate().unwrap();
    let sealed = node.dir.path().join("tpm");
    seal_all(&swtpm, &sealed, &[("node", &key)]);
    let file = stateless_keys::sealed::read_sealed_file(&sealed.join("node.sealed")).unwrap();
    assert_eq!(tpm(&swtpm).unseal(&file).unwrap().id(), key.id());

    // No server answers and there is no cache: the boot fails before any
    // key is needed, on to the emergency shell; the keys are closed anyway.
    let dead = support::free_port();
    let (code, err) = boot(&node, dead, &swtpm, &sealed);
    assert_ne!(code, 0, "{err}");
    assert_eq!(pcr15(&swtpm), locked_value(Bank::Sha256, &boot_value(Bank::Sha256)).unwrap());
    let refused = tpm(&swtpm).unseal(&file).unwrap_err();
    assert!(refused.to_string().starts_with("PCR 15 (sha256) has moved"), "{refused}");
}

#[test]
fn a_key_sealed_with_a_pin_asks_for_it_on_the_console() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, Scope::Node("node42".into()), &[("etc/motd", b"pinned\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let swtpm = Swtpm::start();
    let sealed = node.dir.path().join("tpm");
    fs::create_dir_all(&sealed).unwrap();
    // As `tpm-seal --pcrs 7 --no-lock --pin` does (no lock: the same swtpm
    // boots several times here).
    let mut t = tpm(&swtpm);
    t.set_pin(Some(b"2468")).unwrap();
    let file = t.seal(&site.key, Bank::Sha256, &[7]).unwrap();
    drop(t);
    fs::write(sealed.join("node.sealed"), file.to_text()).unwrap();
    let console = node.dir.path().join("console");
    let run = |typed: &str| {
        fs::write(&console, typed).unwrap();
        node.fresh_sysroot();
        let cmdline = format!(
            "rd.stateless.server=http://127.0.0.1:{} rd.stateless.node=node42 rd.stateless.timeout=3 \
             rd.stateless.key=tpm rd.stateless.tpm={}",
            nginx.port,
            swtpm.selector()
        );
        let args = ["--sealed-dir", sealed.to_str().unwrap(), "--console", console.to_str().unwrap()];
        let (code, err, _) = node.boot_args(&cmdline, false, &[], &args);
        (code, err, fs::read_to_string(&console).unwrap())
    };

    let (code, err, shown) = run("2468\n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("pinned\n"));
    assert!(shown.ends_with(&format!("stateless: PIN for TPM key {}: ", site.key.id().short())), "{shown:?}");

    // Asked at the start of the run, before any network wait (so that the
    // typing does not count against rd.stateless.timeout): also when no
    // server answers and no bundle ever needs the key.
    let (code, err, shown) = {
        fs::write(&console, "2468\n").unwrap();
        let dead = support::free_port();
        let cmdline = format!(
            "rd.stateless.server=http://127.0.0.1:{dead} rd.stateless.node=node42 rd.stateless.timeout=1 \
             rd.stateless.key=tpm rd.stateless.tpm={}",
            swtpm.selector()
        );
        let args = ["--sealed-dir", sealed.to_str().unwrap(), "--console", console.to_str().unwrap()];
        let (code, err, _) = node.boot_args(&cmdline, false, &[], &args);
        (code, err, fs::read_to_string(&console).unwrap())
    };
    assert_ne!(code, 0, "{err}");
    assert!(shown.contains("stateless: PIN for TPM key"), "{shown:?}");

    // Nothing typed: one line saying so.
    let (code, err, _) = run("");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(&format!("TPM: key {}: sealed with a PIN, and none was typed", site.key.id().short())),
        "{err}"
    );

    // A wrong PIN, asked three times, then refused.
    let (code, err, shown) = run("1357\n");
    assert_ne!(code, 0, "{err}");
    assert_eq!(shown.matches("stateless: PIN for TPM key").count(), 3, "{shown:?}");
    assert!(shown.contains(", again: "), "{shown:?}");
    assert_eq!(node.read("etc/motd"), None);
    let want = format!("TPM: key {}: wrong PIN (the TPM counts failed tries", site.key.id().short());
    assert!(err.contains(&want), "{err}");
}
