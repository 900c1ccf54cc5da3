//! The loader's key ladder end to end: the loader binary fetches an
//! encrypted bundle from nginx on 127.0.0.1 and finds its key in the boot
//! image's key directory, on a vfat USB stick image, or sealed in swtpm.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stateless_bundle::{Key, Scope};
use stateless_keys::sealed::Bank;
use stateless_keys::tpm::Tpm;
use support::swtpm::Swtpm;
use support::{Nginx, Node, Site, stick};

const NODE: &str = "rd.stateless.node=node42 rd.stateless.timeout=3";

/// Runs the loader with extra flags; returns (exit code, stderr, status.json).
fn boot(node: &Node, cmdline: &str, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, String, serde_json::Value) {
    let run = node.dir.path().join("run");
    let _ = fs::remove_file(run.join("status.json"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stateless-loader"));
    cmd.arg("--cmdline").arg(cmdline).arg("--sysroot").arg(node.sysroot()).arg("--run-dir").arg(&run);
    cmd.arg("--cache-dir").arg(node.dir.path().join("cache")).env("STATELESS_LOG_STDERR", "1");
    for e in extra {
        cmd.arg(e);
    }
    let out = cmd.output().unwrap();
    let status = fs::read(run.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned(), status)
}

fn serve(site: &Site) -> (Nginx, String) {
    site.publish("v1/nodes/node42/bundle", 1, Scope::Node("node42".into()), &[("etc/motd", b"keyed\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let server = format!("rd.stateless.server=http://127.0.0.1:{}", nginx.port);
    (nginx, server)
}

#[test]
fn key_from_a_usb_stick_image() {
    let site = Site::new();
    let (_nginx, server) = serve(&site);
    let node = Node::new();
    let img = stick(node.dir.path(), "STATELESS", &[&Key::generate().unwrap(), &site.key]);
    let (code, err, status) = boot(&node, &format!("{server} {NODE} rd.stateless.key=usb"), &[&"--usb-device", &img]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("keyed\n"));
    assert_eq!(status["key_source"], "USB stick STATELESS");
    assert!(err.contains(&format!("(key {} from USB stick STATELESS)", site.key.id().short())), "{err}");
    // Another label is another stick: not found, and no waiting with a fixed device list.
    node.fresh_sysroot();
    let t = Instant::now();
    let (code, err, _) = boot(&node, &format!("{server} {NODE} rd.stateless.key=usb:KEYS"), &[&"--usb-device", &img]);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("USB stick KEYS: not found"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

#[test]
fn auto_ladder_names_what_each_source_had_then_rotation() {
    let site = Site::new();
    let (_nginx, server) = serve(&site);
    let node = Node::new();
    let (old, on_stick) = (Key::generate().unwrap(), Key::generate().unwrap());
    let keys = node.dir.path().join("keys");
    fs::create_dir(&keys).unwrap();
    stateless_keys::write_key_file(&keys.join("old.key"), &old, false).unwrap();
    let img = stick(node.dir.path(), "STATELESS", &[&on_stick]);
    let sealed = node.dir.path().join("tpm");
    let flags: [&dyn AsRef<std::ffi::OsStr>; 6] =
        [&"--key-dir", &keys, &"--usb-device", &img, &"--sealed-dir", &sealed];
    let (code, err, _) = boot(&node, &format!("{server} {NODE}"), &flags);
    assert_eq!(code, 10, "{err}");
    // The boot image holds a key, so auto does not consult the stick
    // (docs/cmdline.md, rd.stateless.key).
    let want = format!(
        "bundle needs key {}; key directory {} had {}; TPM: no sealed key ({} does not exist); USB stick STATELESS: not consulted: the boot image holds keys",
        site.key.id().short(),
        keys.display(),
        old.id().short(),
        sealed.display()
    );
    assert!(err.contains(&want), "{err}\nwant: {want}");
    assert!(!err.contains(&on_stick.id().short()), "{err}");
    // Rotation: the new key joins the old one in the boot image.
    stateless_keys::write_key_file(&keys.join("new.key"), &site.key, false).unwrap();
    let (code, err, status) = boot(&node, &format!("{server} {NODE}"), &flags);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["key_source"], format!("key directory {}", keys.display()));
    assert_eq!(status["key_id"], site.key.id().to_string());
}

#[test]
fn usb_wait_is_bounded() {
    let site = Site::new();
    let (_nginx, server) = serve(&site);
    let node = Node::new();
    // A real scan of /sys/class/block for a label nothing has.
    let t = Instant::now();
    let (code, err, _) = boot(&node, &format!("{server} {NODE} rd.stateless.key=usb:NOSUCH42"), &[]);
    let took = t.elapsed();
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("USB stick NOSUCH42: not found (waited 5 s)"), "{err}");
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(12), "{took:?}");
}

#[test]
fn key_sealed_in_swtpm_then_pcr_change_fails_closed() {
    let site = Site::new();
    let (_nginx, server) = serve(&site);
    let node = Node::new();
    let swtpm = Swtpm::start();
    let sealed_dir = node.dir.path().join("tpm");
    fs::create_dir(&sealed_dir).unwrap();
    {
        let mut tpm = Tpm::open(&swtpm.selector().parse().unwrap()).unwrap();
        let sealed = tpm.seal(&site.key, Bank::Sha256, &[7]).unwrap();
        fs::write(sealed_dir.join("node42.sealed"), sealed.to_text()).unwrap();
        // A second node's sealed key beside it is never sent to the TPM.
        let other = tpm.seal(&Key::generate().unwrap(), Bank::Sha256, &[7]).unwrap();
        fs::write(sealed_dir.join("node43.sealed"), other.to_text()).unwrap();
    }
    let cmdline = format!("{server} {NODE} rd.stateless.key=tpm rd.stateless.tpm={}", swtpm.selector());
    let flags: [&dyn AsRef<std::ffi::OsStr>; 2] = [&"--sealed-dir", &sealed_dir];
    let (code, err, status) = boot(&node, &cmdline, &flags);
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("keyed\n"));
    assert_eq!(status["key_source"], "TPM");
    // auto finds it too, after the empty boot image and no stick.
    node.fresh_sysroot();
    let empty = node.dir.path().join("nokeys");
    let auto = format!("{server} {NODE} rd.stateless.tpm={}", swtpm.selector());
    let (code, err, _) =
        boot(&node, &auto, &[&"--sealed-dir", &sealed_dir, &"--key-dir", &empty, &"--usb-device", &"/dev/null"]);
    assert_eq!(code, 0, "{err}");

    // A different boot chain: PCR 7 changes, and the key stays sealed.
    Tpm::open(&swtpm.selector().parse().unwrap()).unwrap().pcr_extend(7, Bank::Sha256, &[0x5a; 32]).unwrap();
    node.fresh_sysroot();
    let (code, err, _) = boot(&node, &cmdline, &flags);
    assert_eq!(code, 10, "{err}");
    let want = format!("TPM: key {}: PCR 7 (sha256) differs from the sealed policy", site.key.id().short());
    assert!(err.contains(&want), "{err}");
    assert_eq!(node.read("etc/motd"), None);
}

#[path = "../../tests/support/prereq.rs"]
mod prereq;

/// A loop device over an image, detached on drop.
struct Loop(PathBuf);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// An ext4 stick labelled STATELESS holding `src`, on a loop device.
fn ext4_stick(dir: &Path, src: &Path) -> Option<Loop> {
    if !rustix::process::geteuid().is_root() {
        prereq::missing("loop devices need root");
        return None;
    }
    let img = dir.join("stick.img");
    fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
    let made = Command::new("mkfs.ext4").args(["-q", "-F", "-L", "STATELESS", "-d"]).arg(src).arg(&img).status();
    if !made.is_ok_and(|s| s.success()) {
        prereq::missing("mkfs.ext4 -d (e2fsprogs 1.43 or later)");
        return None;
    }
    let out = Command::new("losetup").args(["-f", "--show"]).arg(&img).output().unwrap();
    if !out.status.success() {
        prereq::missing("losetup does not work here");
        return None;
    }
    Some(Loop(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())))
}

#[test]
fn ext4_stick_pointing_off_itself_gives_no_key() {
    let site = Site::new();
    let (_nginx, server) = serve(&site);
    let node = Node::new();
    // The site key sits in a directory of the initramfs; the stick's
    // stateless/keys is a link to it. The loader must not follow it.
    let elsewhere = node.dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    stateless_keys::write_key_file(&elsewhere.join("site.key"), &site.key, false).unwrap();
    let src = node.dir.path().join("stick-src");
    fs::create_dir_all(src.join("stateless")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, src.join("stateless/keys")).unwrap();
    let Some(lo) = ext4_stick(node.dir.path(), &src) else { return };
    let (code, err, _) = boot(&node, &format!("{server} {NODE} rd.stateless.key=usb"), &[&"--usb-device", &lo.0]);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("keys: a symbolic link (not followed)"), "{err}");
    assert_eq!(node.read("etc/motd"), None);

    // The same key as a regular file on the stick is found.
    fs::remove_file(src.join("stateless/keys")).unwrap();
    fs::create_dir(src.join("stateless/keys")).unwrap();
    stateless_keys::write_key_file(&src.join("stateless/keys/site.key"), &site.key, false).unwrap();
    drop(lo);
    let Some(lo) = ext4_stick(node.dir.path(), &src) else { return };
    let (code, err, status) = boot(&node, &format!("{server} {NODE} rd.stateless.key=usb"), &[&"--usb-device", &lo.0]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["key_source"], "USB stick STATELESS");
}

#[test]
fn rollback_floor_holds_across_a_key_rotation() {
    // The boot image holds the old key and the new one. The cache holds a
    // bundle sealed for the new key (generation 6) and one for the old key
    // (3); generation 5 sealed for the old key, replayed by the network, is
    // still a rollback: the floor is 6, not the 3 the old key alone proves.
    let (old_site, new_site) = (Site::new(), Site::new());
    let rel = "v1/nodes/node42/bundle";
    let scope = || Scope::Node("node42".into());
    old_site.publish(rel, 3, scope(), &[("etc/motd", b"gen3\n")], true);
    let nginx = Nginx::start(&old_site.www(), None, "");
    let server = format!("rd.stateless.server=http://127.0.0.1:{}", nginx.port);
    let node = Node::new();
    let keys = node.dir.path().join("keys");
    fs::create_dir(&keys).unwrap();
    stateless_keys::write_key_file(&keys.join("old.key"), &old_site.key, false).unwrap();
    stateless_keys::write_key_file(&keys.join("new.key"), &new_site.key, false).unwrap();
    let flags: [&dyn AsRef<std::ffi::OsStr>; 2] = [&"--key-dir", &keys];
    let cmdline = format!("{server} {NODE}");
    let (code, err, _) = boot(&node, &cmdline, &flags);
    assert_eq!(code, 0, "{err}");

    old_site.put(rel, &new_site.make(6, scope(), &[("etc/motd", b"gen6\n")], true));
    let (code, err, status) = boot(&node, &cmdline, &flags);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["generation"], 6);

    old_site.publish(rel, 5, scope(), &[("etc/motd", b"gen5 replayed\n")], true);
    let (code, err, status) = boot(&node, &cmdline, &flags);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rollback refused: bundle generation 5 is older than generation 6"), "{err}");
    assert_eq!(status["source"], "cache-current");
    assert_eq!(node.read("etc/motd").as_deref(), Some("gen6\n"));
}
