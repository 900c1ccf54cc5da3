//! Image layers (issue 18): the loader verifies an EROFS image bundle whole
//! in the overlay's tmpfs, mounts it read-only and stacks it into the root
//! overlay under the upper layer, against nginx on 127.0.0.1. Needs root,
//! erofs-utils (mkfs.erofs, to make the images) and a kernel with EROFS and
//! overlayfs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

#[path = "../../tests/support/prereq.rs"]
mod prereq;

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use stateless_bundle::{Header, Limits, PackOptions, PayloadKind, RawHeader, Scope};
use support::{Nginx, Node, Site};

/// cap_net_raw+ep (VFS_CAP_REVISION_2).
const CAP_NET_RAW: [u8; 20] = [1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn ready() -> bool {
    if !rustix::process::geteuid().is_root() {
        prereq::missing("mounting an image layer needs root");
        return false;
    }
    if Command::new("mkfs.erofs").arg("--help").output().is_err() {
        prereq::missing("mkfs.erofs (erofs-utils) is not installed");
        return false;
    }
    let _ = Command::new("modprobe").args(["-q", "erofs"]).status();
    let listed = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for fs in ["erofs", "overlay"] {
        if !listed.lines().any(|l| l.ends_with(&format!("\t{fs}"))) {
            prereq::missing(&format!("this kernel has no {fs}"));
            return false;
        }
    }
    true
}

/// Unmounts what a boot with `rd.stateless.overlay=1` mounted under the
/// node (the overlay on the sysroot, the tmpfs with the image mounts).
struct Mounted<'a>(&'a Node);

impl Mounted<'_> {
    fn release(&self) {
        for p in [self.0.sysroot(), self.0.dir.path().join("run/overlay")] {
            let _ = Command::new("umount").arg("-R").arg("-l").arg(&p).status();
        }
    }
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

fn cmd(site: &Site, port: u16) -> String {
    format!(
        "rd.stateless.server=http://127.0.0.1:{port} rd.stateless.node=node42 rd.stateless.key=file:{} \
         rd.stateless.timeout=20 rd.stateless.overlay=1",
        site.key_file.display()
    )
}

fn layer_toml(kind: &str, name: Option<&str>, groups: &[&str]) -> String {
    let mut t = format!("kind = \"{kind}\"\n");
    if let Some(n) = name {
        t.push_str(&format!("name = {n:?}\n"));
    }
    if !groups.is_empty() {
        let l: Vec<String> = groups.iter().map(|g| format!("{g:?}")).collect();
        t.push_str(&format!("groups = [{}]\n", l.join(", ")));
    }
    t
}

/// Packs `image` (an EROFS file) as an image bundle sealed with the site key.
fn seal_image(site: &Site, image: &Path, generation: u64, scope: Scope) -> Vec<u8> {
    let opts = PackOptions {
        key: Some(&site.key),
        generation,
        created: 1_760_000_000,
        expires: None,
        scope,
        level: 3,
        threads: 0,
        deletions: Vec::new(),
        limits: Limits::default(),
    };
    let mut out = Cursor::new(Vec::new());
    stateless_bundle::pack_image(image, &mut out, &opts).unwrap();
    out.into_inner()
}

/// The group rack7 layer as an image: a file, a symlink, a capability, a
/// whiteout hiding a base-image file and an opaque directory.
fn group_image(dir: &Path) -> PathBuf {
    let t = dir.join("group-tree");
    for d in [".stateless", "etc/conf.d", "usr/bin"] {
        fs::create_dir_all(t.join(d)).unwrap();
    }
    fs::write(t.join(".stateless/layer.toml"), layer_toml("group", Some("rack7"), &[])).unwrap();
    fs::write(t.join("etc/img"), "from the image\n").unwrap();
    fs::write(t.join("etc/motd"), "image motd\n").unwrap();
    symlink("img", t.join("etc/img-link")).unwrap();
    fs::write(t.join("etc/conf.d/only"), "only\n").unwrap();
    rustix::fs::setxattr(t.join("etc/conf.d"), "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty())
        .unwrap();
    fs::write(t.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(t.join("usr/bin/tool"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    rustix::fs::setxattr(t.join("usr/bin/tool"), "security.capability", &CAP_NET_RAW, rustix::fs::XattrFlags::empty())
        .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        t.join("etc/hidden"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let image = dir.join("group.erofs");
    let out = Command::new("mkfs.erofs").arg("--quiet").arg("-zlz4hc").arg(&image).arg(&t).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    image
}

/// A base image with a file the image hides and a directory it makes opaque.
fn base(node: &Node) {
    let root = node.sysroot();
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::write(root.join("etc/hidden"), "base, hidden by the image\n").unwrap();
    fs::write(root.join("etc/conf.d/base.conf"), "base\n").unwrap();
}

/// default (tar), group rack7 (image), node (tar, names the group).
fn publish(site: &Site, group: &[u8]) {
    let default = site.make_with(
        1,
        Scope::Any,
        &[
            ("etc/motd", b"default motd\n"),
            ("etc/from-default", b"d\n"),
            (".stateless/layer.toml", layer_toml("default", None, &[]).as_bytes()),
        ],
        &[],
        true,
    );
    site.put("v1/default/bundle", &default);
    site.put("v1/groups/rack7/bundle", group);
    let node = site.make_with(
        3,
        Scope::Node("node42".into()),
        &[("etc/n", b"node\n"), (".stateless/layer.toml", layer_toml("node", Some("node42"), &["rack7"]).as_bytes())],
        &[],
        true,
    );
    site.put("v1/nodes/node42/bundle", &node);
}

/// The erofs mounts below `run`, with their options.
fn erofs_mounts(run: &Path) -> Vec<String> {
    let run = fs::canonicalize(run).unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            l.contains(" - erofs ") && l.split(' ').nth(4).is_some_and(|m| m.starts_with(&*run.to_string_lossy()))
        })
        .map(str::to_owned)
        .collect()
}

fn images_left(node: &Node) -> Vec<String> {
    fs::read_dir(node.dir.path().join("run/overlay/images"))
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn an_image_layer_is_mounted_under_the_upper_layer_and_kept_in_the_cache() {
    if !ready() {
        return;
    }
    let site = Site::new();
    let work = tempfile::tempdir().unwrap();
    let group = seal_image(&site, &group_image(work.path()), 2, Scope::Group("rack7".into()));
    publish(&site, &group);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    base(&node);
    let mounted = Mounted(&node);
    let (code, err, status) = node.boot(&cmd(&site, nginx.port));
    assert_eq!(code, 0, "{err}");
    let root = node.sysroot();
    assert_eq!(node.read("etc/img").as_deref(), Some("from the image\n"));
    assert_eq!(fs::read_link(root.join("etc/img-link")).unwrap(), Path::new("img"));
    assert_eq!(node.read("etc/motd").as_deref(), Some("image motd\n"), "the image is above the default layer");
    assert_eq!(node.read("etc/n").as_deref(), Some("node\n"));
    assert_eq!(node.read("etc/from-default").as_deref(), Some("d\n"));
    assert_eq!(node.read("etc/base").as_deref(), Some("from the image\n"), "the base shows through");
    assert!(!root.join("etc/hidden").exists(), "the image's whiteout hides the base file");
    assert!(!root.join("etc/conf.d/base.conf").exists(), "the opaque directory hides the base's entries");
    assert_eq!(node.read("etc/conf.d/only").as_deref(), Some("only\n"));
    let mut cap = [0u8; 64];
    let n = rustix::fs::getxattr(root.join("usr/bin/tool"), "security.capability", &mut cap).unwrap();
    assert_eq!(&cap[..n], &CAP_NET_RAW, "the capability reaches the root");
    assert!(!root.join(".stateless").exists(), ".stateless/ is never part of the root");
    // The base image itself is unchanged (seen through the read-only bind).
    let lower = node.dir.path().join("run/overlay/lower");
    assert_eq!(fs::read_to_string(lower.join("etc/hidden")).unwrap(), "base, hidden by the image\n");
    assert!(!lower.join("etc/img").exists());
    // Mounted read-only, nodev, nosuid, from the tmpfs.
    let mounts = erofs_mounts(&node.dir.path().join("run"));
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let opts = mounts[0].split(' ').nth(5).unwrap();
    for o in ["ro", "nodev", "nosuid"] {
        assert!(opts.split(',').any(|x| x == o), "{o} missing: {}", mounts[0]);
    }
    let images = images_left(&node);
    assert!(images.iter().any(|n| n.ends_with(".erofs")), "{images:?}");
    assert_eq!(status["layers"].as_array().unwrap().len(), 3, "{status}");
    assert_eq!(status["layers"][1]["target"], "group:rack7");
    assert!(status["timings_ms"].to_string().contains("mount images"), "{status}");
    // The cache keeps the image bundle as it came, like any bundle.
    let blobs: Vec<Vec<u8>> = fs::read_dir(node.dir.path().join("cache/blobs"))
        .unwrap()
        .map(|e| fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(blobs.contains(&group), "the image bundle is in the cache");

    // Offline, from the cache: the same root again.
    mounted.release();
    drop(nginx);
    node.fresh_sysroot();
    base(&node);
    let offline = cmd(&site, support::free_port()).replace("timeout=20", "timeout=2");
    let (code, err, status) = node.boot(&offline);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-current", "{status}");
    assert_eq!(node.read("etc/img").as_deref(), Some("from the image\n"));
    assert!(!root.join("etc/hidden").exists());
    let n = rustix::fs::getxattr(root.join("usr/bin/tool"), "security.capability", &mut cap).unwrap();
    assert_eq!(&cap[..n], &CAP_NET_RAW);
}

/// Boots a site whose group layer is `group` and expects the stack refused
/// with `want` in the line, nothing mounted and nothing stored.
fn refused(group: impl FnOnce(&Site, &Path) -> Vec<u8>, want: &str, kind: &str) {
    let site = Site::new();
    let work = tempfile::tempdir().unwrap();
    let bytes = group(&site, work.path());
    publish(&site, &bytes);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    base(&node);
    let _mounted = Mounted(&node);
    let (code, err, status) = node.boot(&format!("{} rd.stateless.onfail=continue", cmd(&site, nginx.port)));
    assert_ne!(status["result"], "applied", "{err}");
    let _ = code;
    assert!(err.contains(want), "{want:?} not in: {err}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
    assert!(status.to_string().contains(&format!("\"kind\":\"{kind}\"")), "kind {kind}: {status}");
    assert_eq!(erofs_mounts(&node.dir.path().join("run")), Vec::<String>::new());
    assert_eq!(images_left(&node), Vec::<String>::new(), "nothing of the image is kept");
    assert!(!node.sysroot().join("etc/img").exists());
}

#[test]
fn a_tampered_image_is_refused_before_it_is_mounted() {
    if !ready() {
        return;
    }
    refused(
        |site, dir| {
            let mut b = seal_image(site, &group_image(dir), 2, Scope::Group("rack7".into()));
            let at = b.len() - 100;
            b[at] ^= 0x01;
            b
        },
        "authentication failed",
        "authentication",
    );
}

#[test]
fn an_image_declaring_more_than_the_limit_is_refused_before_it_is_stored() {
    if !ready() {
        return;
    }
    refused(
        |site, _| {
            // A header made with the site key that declares a 3 GiB image
            // (the limit is 2 GiB) over a short payload: refused from the
            // header, before a byte of the image is written.
            let payload = vec![0u8; stateless_bundle::stream::encrypted_len(4096) as usize];
            let header = Header {
                cipher: stateless_bundle::Cipher::Aes256GcmStream,
                key_id: site.key.id(),
                salt: [7; 32],
                generation: 2,
                created: 1_760_000_000,
                expires: None,
                kind: PayloadKind::ErofsImage,
                payload_len: payload.len() as u64,
                expanded_len: 3 << 30,
                entry_count: 0,
                scope: Scope::Group("rack7".into()),
                payload_sha256: [0; 32],
                signature: None,
            };
            let mut b = header.to_bytes(Some(&site.key)).unwrap().to_vec();
            assert!(RawHeader::parse(&b).is_ok());
            b.extend_from_slice(&payload);
            b
        },
        "over the limit",
        "limit",
    );
}

#[test]
fn a_corrupt_image_that_authenticates_fails_the_stack_with_a_line() {
    if !ready() {
        return;
    }
    refused(
        |site, dir| {
            // The EROFS magic, then nonsense: a block size of 2^30.
            let mut img = vec![0x5au8; 16384];
            img[1024..1028].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
            img[1024 + 12] = 30;
            let path = dir.join("bad.erofs");
            fs::write(&path, img).unwrap();
            seal_image(site, &path, 2, Scope::Group("rack7".into()))
        },
        "the kernel refused to mount the image",
        "image",
    );
}

#[test]
fn an_image_layer_on_a_root_that_is_not_an_overlay_is_refused() {
    if !ready() {
        return;
    }
    let site = Site::new();
    let work = tempfile::tempdir().unwrap();
    publish(&site, &seal_image(&site, &group_image(work.path()), 2, Scope::Group("rack7".into())));
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let line = cmd(&site, nginx.port).replace("rd.stateless.overlay=1", "rd.stateless.overlay=0");
    let (_, err, status) = node.boot(&format!("{line} rd.stateless.onfail=continue"));
    assert_ne!(status["result"], "applied", "{err}");
    assert!(err.contains("an image layer needs the overlay root"), "{err}");
    assert!(!node.sysroot().join("etc/img").exists());
    assert!(status.to_string().contains("\"kind\":\"image\""), "{status}");
}

#[test]
fn a_single_image_bundle_site_mounts_its_image() {
    if !ready() {
        return;
    }
    let site = Site::new();
    let work = tempfile::tempdir().unwrap();
    let t = work.path().join("tree");
    fs::create_dir_all(t.join("etc")).unwrap();
    fs::write(t.join("etc/single"), "single image\n").unwrap();
    let image = work.path().join("single.erofs");
    let out = Command::new("mkfs.erofs").arg("--quiet").arg(&image).arg(&t).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // No .stateless/layer.toml: a site of single bundles.
    site.put("v1/nodes/node42/bundle", &seal_image(&site, &image, 5, Scope::Node("node42".into())));
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let _mounted = Mounted(&node);
    let (code, err, status) = node.boot(&cmd(&site, nginx.port));
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/single").as_deref(), Some("single image\n"));
    assert_eq!(node.read("etc/base").as_deref(), Some("from the image\n"));
    assert_eq!(status["generation"], 5, "{status}");
    assert!(status["timings_ms"].to_string().contains("mount images"), "{status}");
    assert_eq!(erofs_mounts(&node.dir.path().join("run")).len(), 1);
}

/// The loop-device path that kernels without file-backed EROFS mounts
/// (before 6.12, as the harness's Debian 6.1) take: LOOP_CONFIGURE binds
/// the image read-only, and the device goes when the mount does.
#[test]
fn a_loop_device_binds_an_image_read_only_and_clears_itself() {
    if !ready() {
        return;
    }
    if !Path::new("/dev/loop-control").exists() {
        prereq::missing("no /dev/loop-control (loop devices)");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let t = work.path().join("tree");
    fs::create_dir_all(&t).unwrap();
    fs::write(t.join("f"), "via loop\n").unwrap();
    let image = work.path().join("l.erofs");
    assert!(Command::new("mkfs.erofs").arg("--quiet").arg(&image).arg(&t).status().unwrap().success());
    let backing = fs::File::open(&image).unwrap();
    let dev = stateless_loader::sys::attach_read_only(&backing, Path::new("/dev")).unwrap();
    let name = dev.path.file_name().unwrap().to_string_lossy().into_owned();
    let ro = fs::read_to_string(format!("/sys/block/{name}/ro")).unwrap();
    assert_eq!(ro.trim(), "1", "bound read-only");
    let mnt = work.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let flags =
        rustix::mount::MountFlags::RDONLY | rustix::mount::MountFlags::NODEV | rustix::mount::MountFlags::NOSUID;
    rustix::mount::mount(&dev.path, &mnt, "erofs", flags, c"").unwrap();
    drop(dev);
    drop(backing);
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "via loop\n");
    rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::empty()).unwrap();
    // Autoclear: unmounting detached the device.
    let backing_file = format!("/sys/block/{name}/loop/backing_file");
    for _ in 0..50 {
        if !Path::new(&backing_file).exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{name} still bound after the unmount");
}
