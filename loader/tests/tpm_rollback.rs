//! `rd.stateless.rollback=tpm` end to end: the loader binary fetches from
//! nginx on 127.0.0.1 with no cache disk, keeps each layer target's
//! highest generation in swtpm's NV counters, and after a reboot (a fresh
//! loader process, the same swtpm state, the TPM reset) refuses an older
//! bundle. A missing TPM refuses network bundles; a full NV warns (or
//! refuses with `tpm-strict`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::process::Command;

use stateless_bundle::Scope;
use stateless_keys::tpm::Tpm;
use stateless_keys::tpm::nv;
use support::swtpm::Swtpm;
use support::{Nginx, Node, Site};

fn cmdline(site: &Site, port: u16, tpm: &str, extra: &str) -> String {
    format!(
        "rd.stateless.server=http://127.0.0.1:{port} rd.stateless.node=node42 rd.stateless.key=file:{} \
         rd.stateless.timeout=5 rd.stateless.tpm={tpm} {extra}",
        site.key_file.display()
    )
}

/// A boot without a cache disk: (exit code, stderr, status.json).
fn boot(node: &Node, cmdline: &str) -> (i32, String, serde_json::Value) {
    node.fresh_sysroot();
    node.boot_with(cmdline, false)
}

fn floor(swtpm: &Swtpm, target: &str) -> Option<u64> {
    let mut tpm = Tpm::open(&swtpm.selector().parse().unwrap()).unwrap();
    tpm.rollback_floor(target, false).unwrap().map(|f| f.generation)
}

/// Runs a tpm2-tools command against `swtpm` (no `Tpm` may be open: swtpm
/// serves one connection at a time); returns whether it worked.
fn tool(swtpm: &Swtpm, args: &[&str]) -> bool {
    let out = Command::new("timeout")
        .arg("20")
        .args(args)
        .env("TPM2TOOLS_TCTI", swtpm.selector())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (apt-get install tpm2-tools)", args[0]));
    out.status.success()
}

fn layer_toml(kind: &str, name: Option<&str>) -> Vec<u8> {
    let mut t = format!("kind = \"{kind}\"\n");
    if let Some(n) = name {
        t.push_str(&format!("name = {n:?}\n"));
    }
    t.into_bytes()
}

#[test]
fn an_older_bundle_is_refused_after_a_reboot_without_a_cache() {
    let site = Site::new();
    let nginx = Nginx::start(&site.www(), None, "");
    let swtpm = Swtpm::start();
    let node = Node::new();
    let on = cmdline(&site, nginx.port, &swtpm.selector(), "rd.stateless.rollback=tpm");
    let publish = |g: u64| {
        let motd = format!("gen {g}\n");
        site.publish("v1/nodes/node42/bundle", g, Scope::Node("node42".into()), &[("etc/motd", motd.as_bytes())], true);
    };

    publish(5);
    let (code, err, _) = boot(&node, &on);
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("gen 5\n"));
    assert_eq!(floor(&swtpm, "node:node42"), Some(5));

    // The run locked the counter: root on the running node cannot push it.
    let h = format!("{:#010x}", nv::first_handle("node:node42"));
    assert!(!tool(&swtpm, &["tpm2_nvincrement", &h, "-C", &h]));

    // Reboot; the server now serves generation 4.
    swtpm.reboot();
    publish(4);
    let (code, err, status) = boot(&node, &on);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("rollback refused: bundle generation 4 is older than generation 5 already applied"), "{err}");
    assert_eq!(status["outcomes"][0]["kind"], "rollback", "{status}");
    assert_eq!(node.read("etc/motd"), None);

    // Without the TPM floor (rollback=cache, no cache) the same boot
    // takes it: it was the TPM that refused.
    let off = cmdline(&site, nginx.port, &swtpm.selector(), "");
    let (code, err, _) = boot(&node, &off);
    assert_eq!(code, 0, "{err}");
    assert_eq!(floor(&swtpm, "node:node42"), Some(5));

    // The same generation again, and a newer one: applied and raised.
    swtpm.reboot();
    publish(5);
    let (code, err, _) = boot(&node, &on);
    assert_eq!(code, 0, "{err}");
    publish(9);
    let (code, err, _) = boot(&node, &on);
    // Not rebooted: the counter is locked since the last run; the bundle
    // applies, and the console says the floor was not raised.
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("is locked until the TPM is reset"), "{err}");
    assert_eq!(floor(&swtpm, "node:node42"), Some(5));
    swtpm.reboot();
    let (code, err, status) = boot(&node, &on);
    assert_eq!(code, 0, "{err}");
    assert_eq!(floor(&swtpm, "node:node42"), Some(9));
    eprintln!("timings on swtpm: {}", status["timings_ms"]);
    let stages: Vec<&str> = status["timings_ms"].as_array().unwrap().iter().map(|s| s[0].as_str().unwrap()).collect();
    assert!(stages.contains(&"tpm floor") && stages.contains(&"tpm raise"), "{stages:?}");
}

#[test]
fn each_layer_target_has_its_own_floor() {
    let site = Site::new();
    let nginx = Nginx::start(&site.www(), None, "");
    let swtpm = Swtpm::start();
    let node = Node::new();
    let on = cmdline(&site, nginx.port, &swtpm.selector(), "rd.stateless.rollback=tpm");
    let publish = |default_gen: u64, node_gen: u64| {
        let files = |who: &str, meta: Vec<u8>| -> Vec<(String, Vec<u8>)> {
            vec![(format!("etc/{who}"), format!("{who}\n").into_bytes()), (".stateless/layer.toml".into(), meta)]
        };
        for (rel, g, scope, f) in [
            ("v1/default/bundle", default_gen, Scope::Any, files("default", layer_toml("default", None))),
            (
                "v1/nodes/node42/bundle",
                node_gen,
                Scope::Node("node42".into()),
                files("node", layer_toml("node", Some("node42"))),
            ),
        ] {
            let refs: Vec<(&str, &[u8])> = f.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
            site.publish(rel, g, scope, &refs, true);
        }
    };
    publish(3, 7);
    let (code, err, _) = boot(&node, &on);
    assert_eq!(code, 0, "{err}");
    assert_eq!((floor(&swtpm, "default"), floor(&swtpm, "node:node42")), (Some(3), Some(7)));

    // The default layer rolled back, the node layer newer: the stack is
    // refused, naming the default layer.
    swtpm.reboot();
    publish(2, 8);
    let (code, err, status) = boot(&node, &on);
    assert_eq!(code, 10, "{err}");
    assert!(
        err.contains("layer default: rollback refused: bundle generation 2 is older than generation 3 already applied"),
        "{err}"
    );
    assert_eq!(node.read("etc/node"), None);
    assert_eq!(floor(&swtpm, "node:node42"), Some(7), "{status}");

    // A node layer lower than the default's generation is fine: the floors
    // are per target.
    swtpm.reboot();
    publish(3, 7);
    let (code, err, _) = boot(&node, &on);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_missing_tpm_refuses_network_bundles_and_the_cache_still_boots() {
    let site = Site::new();
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    site.publish("v1/nodes/node42/bundle", 2, Scope::Node("node42".into()), &[("etc/motd", b"two\n")], true);
    // Nothing listens on this port.
    let gone = format!("swtpm:host=127.0.0.1,port={}", support::free_port());
    let on = cmdline(&site, nginx.port, &gone, "rd.stateless.rollback=tpm");
    let (code, err, status) = boot(&node, &on);
    assert_eq!(code, 10, "{err}");
    let line = "rollback state in the TPM cannot be read for node:node42 (TPM swtpm:host=127.0.0.1";
    assert!(err.contains(line), "{err}");
    assert!(err.contains("refused (rd.stateless.rollback=tpm)"), "{err}");
    assert_eq!(status["outcomes"][0]["kind"], "rollback-state", "{status}");
    assert!(status["warnings"].to_string().contains("rollback counters in the TPM not locked"), "{status}");

    // With a cache holding the bundle (filled by a boot without the TPM
    // check), the node boots from it.
    let off = cmdline(&site, nginx.port, &gone, "");
    node.fresh_sysroot();
    let (code, err, _) = node.boot(&off);
    assert_eq!(code, 0, "{err}");
    node.fresh_sysroot();
    let (code, err, status) = node.boot(&on);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-current", "{status}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("two\n"));
}

#[test]
fn a_full_nv_warns_or_with_tpm_strict_refuses() {
    let site = Site::new();
    let nginx = Nginx::start(&site.www(), None, "");
    let swtpm = Swtpm::start();
    let node = Node::new();
    site.publish("v1/nodes/node42/bundle", 4, Scope::Node("node42".into()), &[("etc/motd", b"four\n")], true);
    // Fill the NV: large ordinary indices, small ones, then counters.
    for (base, size, attrs) in [
        (0x0140_0000u32, "2048", "ownerwrite|ownerread"),
        (0x0141_0000, "1", "ownerwrite|ownerread"),
        (0x0142_0000, "8", "ownerwrite|ownerread|nt=counter"),
    ] {
        for i in 0..4096u32 {
            let h = format!("{:#010x}", base + i);
            if !tool(&swtpm, &["tpm2_nvdefine", &h, "-C", "o", "-s", size, "-a", attrs]) {
                break;
            }
        }
    }
    let strict = cmdline(&site, nginx.port, &swtpm.selector(), "rd.stateless.rollback=tpm-strict");
    let (code, err, status) = boot(&node, &strict);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("no room in the TPM's NV for the rollback counter of node:node42"), "{err}");
    assert_eq!(status["outcomes"][0]["kind"], "rollback-state", "{status}");

    let on = cmdline(&site, nginx.port, &swtpm.selector(), "rd.stateless.rollback=tpm");
    let (code, err, status) = boot(&node, &on);
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("four\n"));
    let warnings = status["warnings"].as_array().unwrap();
    assert_eq!(
        warnings[0],
        "no room in the TPM's NV for the rollback counter of node:node42 (TPM_RC_NV_SPACE): its generations are \
         not kept in the TPM (see docs/keys.md); checked against the cache only",
        "{status}"
    );
    // Said once, not again when the floors are raised.
    assert_eq!(warnings.len(), 1, "{status}");
    assert_eq!(floor(&swtpm, "node:node42"), None);
}

#[test]
fn a_wiped_cache_does_not_lower_the_floor_kept_in_the_tpm() {
    let site = Site::new();
    let nginx = Nginx::start(&site.www(), None, "");
    let swtpm = Swtpm::start();
    let node = Node::new();
    let on = cmdline(&site, nginx.port, &swtpm.selector(), "rd.stateless.rollback=tpm");
    let publish = |g: u64| {
        site.publish("v1/nodes/node42/bundle", g, Scope::Node("node42".into()), &[("etc/motd", b"x\n")], true);
    };
    // With a cache disk: both floors are raised (the cache by keeping the
    // bundle, the TPM by its counter).
    publish(6);
    node.fresh_sysroot();
    let (code, err, _) = node.boot(&on);
    assert_eq!(code, 0, "{err}");
    assert_eq!(floor(&swtpm, "node:node42"), Some(6));

    // Someone empties the cache disk; generation 5 is served after a reboot.
    for e in std::fs::read_dir(node.dir.path().join("cache")).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { std::fs::remove_dir_all(p).unwrap() } else { std::fs::remove_file(p).unwrap() }
    }
    swtpm.reboot();
    publish(5);
    node.fresh_sysroot();
    let (code, err, _) = node.boot(&on);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("bundle generation 5 is older than generation 6 already applied"), "{err}");

    // And the other way: a cache floor above the TPM's (the node moved to
    // a new TPM) still refuses; the higher floor wins.
    publish(9);
    node.fresh_sysroot();
    let (code, err, _) = node.boot(&on);
    assert_eq!(code, 0, "{err}");
    let other = Swtpm::start();
    let new_tpm = cmdline(&site, nginx.port, &other.selector(), "rd.stateless.rollback=tpm");
    publish(8);
    node.fresh_sysroot();
    let (code, err, status) = node.boot(&new_tpm);
    assert_eq!(code, 0, "the cache applies its own slot: {err}");
    assert_eq!(status["source"], "cache-current", "{status}");
    assert!(err.contains("bundle generation 8 is older than generation 9 already applied"), "{err}");
    // The new TPM's counter was made at the check, and not raised.
    assert_eq!(floor(&other, "node:node42"), Some(0));
}

#[test]
fn deleting_a_counter_on_the_running_node_does_not_let_an_older_bundle_in() {
    let site = Site::new();
    let nginx = Nginx::start(&site.www(), None, "");
    let swtpm = Swtpm::start();
    let node = Node::new();
    let on = cmdline(&site, nginx.port, &swtpm.selector(), "rd.stateless.rollback=tpm");
    let publish = |g: u64| {
        site.publish("v1/nodes/node42/bundle", g, Scope::Node("node42".into()), &[("etc/motd", b"x\n")], true);
    };
    publish(5);
    let (code, err, _) = boot(&node, &on);
    assert_eq!(code, 0, "{err}");
    // Root on the running node, with the owner's empty auth, deletes the
    // counter (locked or not, deleting is the owner's right).
    let h = format!("{:#010x}", nv::first_handle("node:node42"));
    assert!(tool(&swtpm, &["tpm2_nvundefine", &h, "-C", "o"]));
    assert_eq!(floor(&swtpm, "node:node42"), None);
    // After the reboot the loader makes the counter again before it accepts
    // anything, and the TPM starts it above the deleted one's count: one
    // generation higher than the floor was (a denial of service: the site
    // publishes a newer bundle), never lower.
    swtpm.reboot();
    publish(4);
    let (code, err, status) = boot(&node, &on);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("bundle generation 4 is older than generation 6 already applied"), "{err}");
    let started = "the TPM started the new rollback counter of node:node42 at generation 6";
    assert!(status["warnings"].to_string().contains(started), "{status}");
    assert_eq!(floor(&swtpm, "node:node42"), Some(6));
    swtpm.reboot();
    publish(6);
    let (code, err, _) = boot(&node, &on);
    assert_eq!(code, 0, "{err}");
}
