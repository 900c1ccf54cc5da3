//! Enrolling keys: `statelessctl key initramfs`, `key usb`, `key tpm-seal`
//! and `key tpm-check`, checked with the standard tools (cpio, dosfstools,
//! mtools, tpm2-tools) and read back with the loader's own key sources.
//! TPM tests run against swtpm started on 127.0.0.1 by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "../../tests/support/swtpm.rs"]
mod swtpm;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use stateless_bundle::{Key, PublicKey};
use stateless_keys::cpio::read_archives;
use stateless_keys::sealed::{Bank, SealedKey, read_sealed_file};
use stateless_keys::tpm::{Tpm, TpmError};
use stateless_keys::usb::{Devices, FsKind, UsbSource, probe};
use stateless_keys::{
    KeySource, Lookup, PUBLISHER_DIR, TpmSource, read_key_file, read_public_key_dir, read_public_key_file,
};
use swtpm::Swtpm;

fn ctl(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_statelessctl")).args(args).current_dir(cwd).output().unwrap()
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let o = ctl(args, cwd);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn fails(args: &[&str], cwd: &Path) -> String {
    let o = ctl(args, cwd);
    assert_eq!(o.status.code(), Some(1), "{args:?} should fail: {}", String::from_utf8_lossy(&o.stdout));
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    err
}

fn sh(script: &str, cwd: &Path) -> Output {
    let o = Command::new("bash").args(["-c", script]).current_dir(cwd).output().unwrap();
    assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn new_key(dir: &Path, name: &str) -> Key {
    ok(&["key", "new", "-o", name], dir);
    read_key_file(&dir.join(name)).unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

// ---------------------------------------------------------------- initramfs

#[test]
fn initramfs_gets_a_keyed_archive_the_kernel_and_cpio_can_read() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let (a, b) = (new_key(p, "a.key"), new_key(p, "b.key"));
    // A base image as dracut makes it: a newc archive, here of an odd length
    // so that the padding rule matters.
    fs::create_dir_all(p.join("base/etc")).unwrap();
    fs::write(p.join("base/etc/os-release"), "ID=test\n").unwrap();
    fs::write(p.join("base/init"), "#!/bin/sh\n").unwrap();
    sh("cd base && find . | cpio -o -H newc --quiet > ../in.img && printf x >> ../in.img", p);
    let input = fs::read(p.join("in.img")).unwrap();
    let out = ok(&["key", "initramfs", "--key", "a.key", "--key", "b.key", "--initrd", "in.img", "-o", "out.img"], p);
    assert!(out.contains(&a.id().to_string()) && out.contains(&b.id().to_string()), "{out}");
    assert_eq!(mode(&p.join("out.img")), 0o600);
    let image = fs::read(p.join("out.img")).unwrap();
    assert_eq!(&image[..input.len()], &input[..], "the original image is kept byte for byte");
    let tail_at = input.len().div_ceil(4) * 4;
    assert!(image[input.len()..tail_at].iter().all(|&b| b == 0));

    // Our reader, from the start of the appended archive.
    let (entries, end) = read_archives(&image[tail_at..]).unwrap();
    assert_eq!(end, image.len() - tail_at);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let (ka, kb) = (format!("etc/stateless/keys/{}.key", a.id()), format!("etc/stateless/keys/{}.key", b.id()));
    assert_eq!(names, ["etc", "etc/stateless", "etc/stateless/keys", ka.as_str(), kb.as_str()]);
    assert_eq!(entries[0].mode, 0o040_755);
    assert_eq!(entries[2].mode, 0o040_700);
    assert_eq!(entries[3].mode, 0o100_600);
    assert_eq!(Key::from_file_text(&entries[3].data).unwrap().id(), a.id());

    // Debian's cpio lists and extracts it.
    fs::write(p.join("tail.cpio"), &image[tail_at..]).unwrap();
    let list = sh("cpio -t --quiet < tail.cpio", p);
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(list.lines().any(|l| l == ka), "{list}");
    fs::create_dir(p.join("x")).unwrap();
    sh("cd x && cpio -i -d --quiet < ../tail.cpio", p);
    let extracted = p.join("x").join(&kb);
    assert_eq!(read_key_file(&extracted).unwrap().id(), b.id());
    assert_eq!(mode(&extracted), 0o600);

    // No silent overwrite; --force replaces.
    let err = fails(&["key", "initramfs", "--key", "a.key", "--initrd", "in.img", "-o", "out.img"], p);
    assert!(err.contains("exists"), "{err}");
    ok(&["key", "initramfs", "--key", "a.key", "--initrd", "in.img", "-o", "out.img", "--force"], p);
}

#[test]
fn initramfs_after_a_compressed_image() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let a = new_key(p, "a.key");
    fs::create_dir_all(p.join("base")).unwrap();
    fs::write(p.join("base/init"), "#!/bin/sh\n").unwrap();
    sh("cd base && find . | cpio -o -H newc --quiet | zstd -q -19 > ../in.img", p);
    let input_len = fs::metadata(p.join("in.img")).unwrap().len() as usize;
    ok(&["key", "initramfs", "--key", "a.key", "--initrd", "in.img", "-o", "out.img"], p);
    let image = fs::read(p.join("out.img")).unwrap();
    // The zstd frame decodes on its own; the key archive follows, aligned.
    sh("head -c $(stat -c %s in.img) out.img | zstd -dq | cpio -t --quiet | grep -qx init", p);
    let (entries, _) = read_archives(&image[input_len.div_ceil(4) * 4..]).unwrap();
    assert!(entries.iter().any(|e| e.name == format!("etc/stateless/keys/{}.key", a.id())));
}

#[test]
fn initramfs_embeds_publisher_public_keys() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let site = new_key(p, "site.key");
    let signer = |name: &str| {
        let id = ok(&["key", "new-signing", "-o", &format!("{name}.sign"), "--pub-out", &format!("{name}.pub")], p);
        (id.trim().to_owned(), read_public_key_file(&p.join(format!("{name}.pub"))).unwrap())
    };
    let ((old_id, old), (new_id, new)) = (signer("old"), signer("new"));
    fs::write(p.join("in.img"), b"").unwrap();
    // Two publishers (a rotation), the first given twice, and a site key.
    let args = ["key", "initramfs", "--pubkey", "old.pub", "--pubkey", "new.pub", "--pubkey", "old.pub"];
    let out = ok(&[&args[..], &["--key", "site.key", "--initrd", "in.img", "-o", "out.img"]].concat(), p);
    assert!(out.contains(&format!("publisher {old_id}")) && out.contains(&format!("publisher {new_id}")), "{out}");
    assert_eq!(out.matches("publisher ").count(), 2, "{out}");
    let (entries, _) = read_archives(&fs::read(p.join("out.img")).unwrap()).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let key = format!("etc/stateless/keys/{}.key", site.id());
    let (po, pn) = (format!("etc/stateless/publishers/{old_id}.pub"), format!("etc/stateless/publishers/{new_id}.pub"));
    assert_eq!(
        names,
        [
            "etc",
            "etc/stateless",
            "etc/stateless/keys",
            key.as_str(),
            "etc/stateless/publishers",
            po.as_str(),
            pn.as_str()
        ]
    );
    assert_eq!(entries[4].mode, 0o040_755);
    assert_eq!((entries[5].mode, entries[6].mode), (0o100_644, 0o100_644));
    assert_eq!(PublicKey::from_file_text(&entries[5].data).unwrap(), old);
    assert_eq!(PublicKey::from_file_text(&entries[6].data).unwrap(), new);

    // cpio extracts them, and the reader the loader will use finds both.
    fs::write(p.join("tail.cpio"), fs::read(p.join("out.img")).unwrap()).unwrap();
    fs::create_dir(p.join("x")).unwrap();
    sh("cd x && cpio -i -d --quiet < ../tail.cpio", p);
    let dir = p.join("x").join(PUBLISHER_DIR.trim_start_matches('/'));
    // Files are read in name order, and each is named by its signer id.
    let mut want = [(old_id.clone(), old), (new_id.clone(), new)];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(read_public_key_dir(&dir).unwrap(), want.map(|(_, k)| k));
    assert_eq!(mode(&dir.join(format!("{old_id}.pub"))) & 0o777, 0o644);

    // Public keys alone: no --key or --sealed needed.
    let out = ok(&["key", "initramfs", "--pubkey", "new.pub", "--initrd", "in.img", "-o", "pub.img"], p);
    assert_eq!(out.trim(), format!("publisher {new_id}"));
    let (entries, _) = read_archives(&fs::read(p.join("pub.img")).unwrap()).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["etc", "etc/stateless", "etc/stateless/publishers", pn.as_str()]);

    // A signing key is a secret and never goes into an image; a site key is
    // not a public key either. Nothing is written.
    let err = fails(&["key", "initramfs", "--pubkey", "old.sign", "--initrd", "in.img", "-o", "bad.img"], p);
    assert!(err.contains("old.sign: not a publisher public key: this is a publisher signing key (secret)"), "{err}");
    let err = fails(&["key", "initramfs", "--pubkey", "site.key", "--initrd", "in.img", "-o", "bad.img"], p);
    assert!(err.contains("this is a site key, not a publisher public key"), "{err}");
    assert!(!p.join("bad.img").exists());
    // Nothing to embed at all is a usage error.
    assert_eq!(ctl(&["key", "initramfs", "--initrd", "in.img", "-o", "bad.img"], p).status.code(), Some(2));
}

#[test]
fn a_node_key_goes_where_a_site_key_goes() {
    // A derived key is an ordinary key file: the boot image and the stick
    // carry it under its own id, and the site key appears nowhere.
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let site = new_key(p, "site.key");
    let id = ok(&["key", "derive", "--site", "site.key", "--node", "node42", "-o", "node42.key"], p).trim().to_owned();
    assert_ne!(id, site.id().to_string());
    fs::write(p.join("in.img"), b"").unwrap();
    ok(&["key", "initramfs", "--key", "node42.key", "--initrd", "in.img", "-o", "out.img"], p);
    let (entries, _) = read_archives(&fs::read(p.join("out.img")).unwrap()).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert!(names.contains(&format!("etc/stateless/keys/{id}.key").as_str()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains(&site.id().to_string())), "{names:?}");
    ok(&["key", "usb", "--key", "node42.key", "--image", "usb.img"], p);
    let src = UsbSource {
        label: "STATELESS".into(),
        devices: Devices::List(vec![p.join("usb.img")]),
        mount_dir: p.join("m"),
    };
    assert_eq!(src.keys().unwrap().iter().map(|k| k.id().to_string()).collect::<Vec<_>>(), [id]);
}

// ---------------------------------------------------------------- USB

#[test]
fn usb_image_holds_rotated_keys_and_is_valid_vfat() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let (old, new) = (new_key(p, "old.key"), new_key(p, "new.key"));
    let out = ok(&["key", "usb", "--key", "old.key", "--image", "usb.img"], p);
    assert!(out.contains(&format!("/stateless/keys/{}.key", old.id())), "{out}");
    ok(&["key", "usb", "--key", "new.key", "--image", "usb.img"], p);
    let img = p.join("usb.img");
    assert_eq!(mode(&img), 0o600);
    assert_eq!(fs::metadata(&img).unwrap().len(), 16 << 20);
    assert_eq!(probe(&img).unwrap(), Some((FsKind::Vfat, "STATELESS".into())));
    // The standard tools agree it is a clean FAT file system with that label.
    sh("fsck.vfat -n usb.img >/dev/null", p);
    let label = String::from_utf8(sh("fatlabel usb.img", p).stdout).unwrap();
    assert_eq!(label.trim(), "STATELESS");
    let listing = String::from_utf8(sh("MTOOLS_SKIP_CHECK=1 mdir -b -i usb.img ::/stateless/keys", p).stdout).unwrap();
    assert!(listing.contains(&old.id().to_string()) && listing.contains(&new.id().to_string()), "{listing}");

    // The loader's source reads both and picks the one a bundle names.
    let src =
        UsbSource { label: "STATELESS".into(), devices: Devices::List(vec![img.clone()]), mount_dir: p.join("m") };
    for k in [&old, &new] {
        match src.lookup(k.id()).unwrap() {
            Lookup::Found(found) => assert_eq!(found.id(), k.id()),
            Lookup::Offered(ids) => panic!("not found, offered {ids:?}"),
        }
    }
    assert_eq!(src.describe(), "USB stick STATELESS");

    // Another label is another stick.
    ok(&["key", "usb", "--key", "old.key", "--image", "site2.img", "--label", "SITE2", "--size", "2M"], p);
    let err = fails(&["key", "usb", "--key", "old.key", "--image", "site2.img"], p);
    assert!(err.contains("not vfat \"STATELESS\""), "{err}");
}

#[test]
fn usb_refusals() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    new_key(p, "a.key");
    fs::write(p.join("plain.img"), vec![0u8; 1 << 20]).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--image", "plain.img"], "holds no vfat file system labelled \"STATELESS\""),
        (&["--device", "plain.img"], "is not a block device"),
        (&["--image", "x.img", "--label", "keys"], "a FAT label is 1 to 11 upper-case"),
        (&["--image", "y.img", "--size", "4K"], "at least 1M"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["key", "usb", "--key", "a.key"];
        args.extend_from_slice(extra);
        let err = fails(&args, p);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // --wipe only goes with --device: a usage error.
    assert_eq!(ctl(&["key", "usb", "--key", "a.key", "--image", "z.img", "--wipe"], p).status.code(), Some(2));
}

/// A loop device over an image file, detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(img: &Path) -> Loop {
        let o = Command::new("losetup").args(["-f", "--show"]).arg(img).output().unwrap();
        assert!(o.status.success(), "losetup: {}", String::from_utf8_lossy(&o.stderr));
        Loop(String::from_utf8(o.stdout).unwrap().trim().to_owned())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn usb_block_devices_vfat_and_mounted_ext4() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let a = new_key(p, "a.key");
    // A blank "stick": refused without --wipe, formatted with it.
    fs::write(p.join("stick.img"), vec![0u8; 4 << 20]).unwrap();
    let lo = Loop::attach(&p.join("stick.img"));
    let err = fails(&["key", "usb", "--key", "a.key", "--device", &lo.0], p);
    assert!(err.contains("--wipe makes a new one"), "{err}");
    ok(&["key", "usb", "--key", "a.key", "--device", &lo.0, "--wipe"], p);
    let src = UsbSource {
        label: "STATELESS".into(),
        devices: Devices::List(vec![lo.0.clone().into()]),
        mount_dir: p.join("m"),
    };
    assert_eq!(src.keys().unwrap().iter().map(Key::id).collect::<Vec<_>>(), [a.id()]);

    // An ext4 stick made by hand is mounted read-only and read.
    fs::create_dir_all(p.join("tree/stateless/keys")).unwrap();
    fs::copy(p.join("a.key"), p.join("tree/stateless/keys/site.key")).unwrap();
    sh("mke2fs -q -t ext4 -L STATELESS -d tree ext4.img 8M", p);
    let lo4 = Loop::attach(&p.join("ext4.img"));
    let before = fs::read(p.join("ext4.img")).unwrap();
    let src = UsbSource {
        label: "STATELESS".into(),
        devices: Devices::List(vec![lo4.0.clone().into()]),
        mount_dir: p.join("m"),
    };
    assert_eq!(src.keys().unwrap().iter().map(Key::id).collect::<Vec<_>>(), [a.id()]);
    // Unmounted again, and never written.
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&p.join("m").display().to_string()), "{mounts}");
    drop(lo4);
    assert!(before == fs::read(p.join("ext4.img")).unwrap(), "the ext4 stick was written to");
}

// ---------------------------------------------------------------- TPM

/// A TPM client for `swtpm`.
fn open_tpm(swtpm: &Swtpm) -> Tpm {
    Tpm::open(&swtpm.selector().parse().unwrap()).unwrap()
}

fn seal(p: &Path, tpm: &Swtpm, key: &str, pcrs: &str, out: &str) -> SealedKey {
    let printed = ok(&["key", "tpm-seal", "--key", key, "--pcrs", pcrs, "--tpm", &tpm.selector(), "-o", out], p);
    assert!(printed.contains("sealed to PCR"), "{printed}");
    assert_eq!(mode(&p.join(out)), 0o600);
    read_sealed_file(&p.join(out)).unwrap()
}

#[test]
fn tpm_seal_then_unseal_by_statelessctl_and_the_key_source() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let swtpm = Swtpm::start();
    let key = new_key(p, "site.key");
    let sealed = seal(p, &swtpm, "site.key", "0,7", "node.sealed");
    assert_eq!(sealed.key_id, key.id());
    // The lock PCR comes with every PCR policy by default, at its boot value.
    assert_eq!(sealed.pcr_indices(), [0, 7, 15]);
    assert_eq!(sealed.pcrs[2].1, [0u8; 32]);
    let text = fs::read_to_string(p.join("node.sealed")).unwrap();
    assert!(!text.contains(&stateless_bundle::key::hex_encode(key.as_bytes())), "the key is in the file in the clear");
    let out = ok(&["key", "tpm-check", "node.sealed", "--tpm", &swtpm.selector()], p);
    assert!(out.starts_with(&format!("key {} unseals", key.id())), "{out}");

    // Into a boot image beside no plain key: /etc/stateless/tpm/<id>.sealed.
    fs::write(p.join("in.img"), b"").unwrap();
    let out = ok(&["key", "initramfs", "--sealed", "node.sealed", "--initrd", "in.img", "-o", "out.img"], p);
    assert!(out.contains(&format!("TPM-sealed key {}", key.id())), "{out}");
    let (entries, _) = read_archives(&fs::read(p.join("out.img")).unwrap()).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let want = format!("etc/stateless/tpm/{}.sealed", key.id());
    assert_eq!(names, ["etc", "etc/stateless", "etc/stateless/tpm", want.as_str()]);
    assert_eq!(entries[3].mode, 0o100_600);
    assert_eq!(SealedKey::parse(&entries[3].data).unwrap(), sealed);

    // As the loader uses it: a directory of sealed keys, unsealed on demand.
    fs::create_dir(p.join("tpm")).unwrap();
    fs::rename(p.join("node.sealed"), p.join("tpm/node.sealed")).unwrap();
    let src = TpmSource { dir: p.join("tpm"), selector: swtpm.selector().parse().unwrap() };
    match src.lookup(key.id()).unwrap() {
        Lookup::Found(k) => assert_eq!(k.as_bytes(), key.as_bytes()),
        Lookup::Offered(_) => panic!("not found"),
    }
    let other = Key::generate().unwrap();
    assert!(matches!(src.lookup(other.id()).unwrap(), Lookup::Offered(ids) if ids == [key.id()]));
    let empty = TpmSource { dir: p.join("none"), selector: swtpm.selector().parse().unwrap() };
    assert!(empty.lookup(key.id()).unwrap_err().to_string().contains("no sealed key"));

    // The source closed the key after unsealing it (PCR 15): for the rest
    // of this boot it stays sealed, and tpm-check says why without failing
    // (the other PCRs hold the sealed values).
    let err = src.lookup(key.id()).unwrap_err().to_string();
    assert!(err.contains("PCR 15 (sha256) has moved since this boot's loader unsealed the key"), "{err}");
    assert!(matches!(open_tpm(&swtpm).unseal(&sealed), Err(TpmError::Locked { .. })));
    let out = ok(&["key", "tpm-check", "tpm/node.sealed", "--tpm", &swtpm.selector()], p);
    assert!(out.contains("not unsealed: PCR 15 (sha256) has moved"), "{out}");
    // Later measurements into PCR 15 on the running system (systemd's
    // machine id on a UKI boot): still not a failure of the sealed key.
    open_tpm(&swtpm).pcr_extend(15, Bank::Sha256, &[0x42; 32]).unwrap();
    let out = ok(&["key", "tpm-check", "tpm/node.sealed", "--tpm", &swtpm.selector()], p);
    assert!(out.contains("not unsealed: PCR 15 (sha256) holds another value than the policy's here"), "{out}");
    // Sealed again on the running system, after the lock: the policy still
    // covers PCR 15's boot value, not the locked one it holds now.
    let resealed = seal(p, &swtpm, "site.key", "7", "again.sealed");
    assert_eq!(resealed.pcrs.iter().find(|(i, _)| *i == 15).unwrap().1, [0u8; 32]);
}

#[test]
fn tpm_unseal_leaves_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let swtpm = Swtpm::start();
    new_key(p, "site.key");
    let sealed = seal(p, &swtpm, "site.key", "7", "node.sealed");
    // Sealing and unsealing leave no objects or sessions behind (swtpm has
    // no resource manager: a leak would show up here).
    let mut tpm = open_tpm(&swtpm);
    // The TPM's RNG, mixed in when the kernel's is not ready yet at boot.
    let (r1, r2) = (tpm.get_random(32).unwrap(), tpm.get_random(32).unwrap());
    assert!(r1.len() == 32 && r1 != r2);
    for _ in 0..5 {
        tpm.unseal(&sealed).unwrap();
    }
    // Nor does the lock (an HMAC session and the SRK each time).
    for _ in 0..5 {
        tpm.lock(&sealed.parent_name).unwrap();
    }
    // Sealed without the lock: not closed by it (swtpm serves one
    // connection at a time: statelessctl gets it alone).
    drop(tpm);
    let open = ok(
        &[
            "key",
            "tpm-seal",
            "--key",
            "site.key",
            "--pcrs",
            "7",
            "--no-lock",
            "--tpm",
            &swtpm.selector(),
            "-o",
            "open.sealed",
        ],
        p,
    );
    assert!(open.contains("sealed to PCR 7 (sha256)"), "{open}");
    let open = read_sealed_file(&p.join("open.sealed")).unwrap();
    assert_eq!(open.pcr_indices(), [7]);
    // Where something measures into PCR 15 before the loader: its value then.
    let lock = "cd".repeat(32);
    let sel = swtpm.selector();
    ok(&["key", "tpm-seal", "--key", "site.key", "--lock-value", &lock, "--tpm", &sel, "-o", "l.sealed"], p);
    let l = read_sealed_file(&p.join("l.sealed")).unwrap();
    assert_eq!((l.pcr_indices(), stateless_bundle::key::hex_encode(&l.pcrs[1].1)), (vec![7, 15], lock.clone()));
    let o = ctl(&["key", "tpm-seal", "--key", "site.key", "--no-lock", "--lock-value", &lock, "-o", "x"], p);
    assert_eq!(o.status.code(), Some(2), "--no-lock and --lock-value conflict");
    let mut tpm = open_tpm(&swtpm);
    for _ in 0..3 {
        tpm.unseal(&open).unwrap();
    }
}

#[test]
fn tpm_changed_pcr_fails_closed_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let swtpm = Swtpm::start();
    new_key(p, "site.key");
    let sealed = seal(p, &swtpm, "site.key", "0,7,10", "node.sealed");
    let mut tpm = open_tpm(&swtpm);
    // What a different boot chain does to PCR 7.
    tpm.pcr_extend(7, Bank::Sha256, &[0x42; 32]).unwrap();
    let err = tpm.unseal(&sealed).unwrap_err();
    assert!(matches!(&err, TpmError::PcrMismatch { pcrs, .. } if pcrs == &[7]), "{err}");
    // swtpm serves one connection at a time.
    drop(tpm);
    let err = fails(&["key", "tpm-check", "node.sealed", "--tpm", &swtpm.selector()], p);
    assert!(err.contains("PCR 7 (sha256) differs from the sealed policy"), "{err}");
    let mut tpm = open_tpm(&swtpm);

    // Even a file edited to claim the new values does not unseal: the TPM
    // enforces the policy bound into the object.
    let now = tpm.pcr_read(Bank::Sha256, &[0, 7, 10]).unwrap();
    let forged = SealedKey {
        policy: stateless_keys::sealed::policy_pcr_digest(Bank::Sha256, &now),
        pcrs: now,
        ..sealed.clone()
    };
    let err = tpm.unseal(&forged).unwrap_err().to_string();
    assert!(err.contains("TPM2_Unseal: TPM_RC_POLICY_FAIL"), "{err}");
    // Re-sealing to the new state works (the documented update procedure).
    drop(tpm);
    let resealed = seal(p, &swtpm, "site.key", "0,7,10", "node2.sealed");
    open_tpm(&swtpm).unseal(&resealed).unwrap();
}

#[test]
fn tpm_object_of_another_tpm_or_edited_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let (one, two) = (Swtpm::start(), Swtpm::start());
    new_key(p, "site.key");
    let sealed = seal(p, &one, "site.key", "7", "node.sealed");
    // Another TPM has another SRK: refused before any salt or object is sent.
    let err = open_tpm(&two).unseal(&sealed).unwrap_err();
    assert!(matches!(err, TpmError::SrkMismatch), "{err}");
    assert!(err.to_string().contains("not the one the key was sealed under"), "{err}");
    // Told the other SRK's name, the other TPM refuses the object itself.
    let other = {
        let mut t = open_tpm(&two);
        t.seal(&Key::generate().unwrap(), Bank::Sha256, &[7]).unwrap()
    };
    let err =
        open_tpm(&two).unseal(&SealedKey { parent_name: other.parent_name.clone(), ..sealed.clone() }).unwrap_err();
    assert!(matches!(err, TpmError::WrongObject { .. }), "{err}");
    assert!(err.to_string().contains("not made by this TPM"), "{err}");
    let mut flipped = sealed.clone();
    let last = flipped.private.len() - 1;
    flipped.private[last] ^= 1;
    assert!(matches!(open_tpm(&one).unseal(&flipped).unwrap_err(), TpmError::WrongObject { .. }));
    // A file that names another key id than the one sealed inside.
    let lying = SealedKey { key_id: Key::generate().unwrap().id(), ..sealed.clone() };
    assert!(open_tpm(&one).unseal(&lying).unwrap_err().to_string().contains("is not key"));
    // An unreachable TPM is a quick, clear error.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = fails(&["key", "tpm-check", "node.sealed", "--tpm", &format!("swtpm:host=127.0.0.1,port={dead}")], p);
    assert!(err.contains("opening the TPM") && err.contains("refused"), "{err}");
}

#[test]
fn tpm_sealed_by_statelessctl_unseals_with_tpm2_tools() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let swtpm = Swtpm::start();
    let key = new_key(p, "site.key");
    seal(p, &swtpm, "site.key", "0,7", "node.sealed");
    // Cut the standard TPM2B blobs out of the file, make the same SRK and
    // unseal with a PCR policy session, as docs/keys.md shows. swtpm has no
    // resource manager, so transient objects are flushed between tools.
    let script = format!(
        "set -euo pipefail
export TPM2TOOLS_TCTI={sel}
sed -n 's/^public //p' node.sealed | xxd -r -p > obj.pub
sed -n 's/^private //p' node.sealed | xxd -r -p > obj.priv
tpm2_createprimary -Q -C o -g sha256 -G ecc256:aes128cfb \\
  -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt' -c srk.ctx
tpm2_readpublic -c srk.ctx | sed -n 's/^name: //p' > srk.name
tpm2_flushcontext -t
tpm2_load -Q -C srk.ctx -u obj.pub -r obj.priv -c obj.ctx
tpm2_flushcontext -t
tpm2_unseal -c obj.ctx -p pcr:sha256:0,7,15 > unsealed.bin
tpm2_flushcontext -t
tpm2_createpolicy -Q --policy-pcr -l sha256:0,7,15 -L policy.bin
",
        sel = swtpm.selector()
    );
    sh(&script, p);
    assert_eq!(fs::read(p.join("unsealed.bin")).unwrap(), key.as_bytes());
    // Our policy digest is the one tpm2-tools computes for the same PCRs.
    let sealed = read_sealed_file(&p.join("node.sealed")).unwrap();
    assert_eq!(fs::read(p.join("policy.bin")).unwrap(), sealed.policy);
    // And the SRK name we pin is the one tpm2-tools reports for the same template.
    let name = fs::read_to_string(p.join("srk.name")).unwrap();
    assert_eq!(name.trim(), stateless_bundle::key::hex_encode(&sealed.parent_name));
}

// ---------------------------------------------------------------- signed TPM policies

#[test]
fn tpm_signed_policies_through_statelessctl() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let swtpm = Swtpm::start();
    let sel = swtpm.selector();
    let key = new_key(p, "site.key");

    let out = ok(&["tpm", "new-policy-key", "-o", "policy.sign"], p);
    assert!(out.starts_with("policy key 000b"), "{out}");
    assert_eq!(mode(&p.join("policy.sign")), 0o600);
    assert_eq!(mode(&p.join("policy.pub")), 0o644);
    let err = fails(&["tpm", "new-policy-key", "-o", "policy.sign"], p);
    assert!(err.contains("policy.sign exists"), "{err}");

    let out =
        ok(&["key", "tpm-seal", "--key", "site.key", "--policy-key", "policy.pub", "--tpm", &sel, "-o", "n.sealed"], p);
    assert!(out.contains("sealed under policy key 000b"), "{out}");
    let sealed = read_sealed_file(&p.join("n.sealed")).unwrap();
    assert!(sealed.policy_key.is_some() && sealed.pcrs.is_empty());
    // --pcrs means sealing to PCR values: not together with a policy key.
    let o = ctl(&["key", "tpm-seal", "--key", "site.key", "--policy-key", "policy.pub", "--pcrs", "7", "-o", "x"], p);
    assert_eq!(o.status.code(), Some(2));

    // No policy: one line saying what to do.
    let err = fails(&["key", "tpm-check", "n.sealed", "--tpm", &sel], p);
    assert!(err.contains("no signed policy was found (make one with `statelessctl tpm sign-policy`"), "{err}");

    let out = ok(
        &[
            "tpm",
            "sign-policy",
            "--policy-key",
            "policy.sign",
            "--pcrs",
            "7,9",
            "--current",
            "--tpm",
            &sel,
            "-o",
            "a.signed",
        ],
        p,
    );
    assert!(out.contains("for PCR 7,9,15 (sha256) signed -> a.signed"), "{out}");
    let out = ok(&["key", "tpm-check", "n.sealed", "--policy", "a.signed", "--tpm", &sel], p);
    assert!(out.starts_with(&format!("key {} unseals", key.id())), "{out}");

    // PCR 9 moves: refused, naming the policy file and the PCR.
    open_tpm(&swtpm).pcr_extend(9, Bank::Sha256, &[9; 32]).unwrap();
    let err = fails(&["key", "tpm-check", "n.sealed", "--policy", "a.signed", "--tpm", &sel], p);
    assert!(err.contains("no signed policy lets the key unseal: a.signed: PCR 9 (sha256) differs"), "{err}");

    // The new values, written down offline (tpm2_pcrread's format), signed:
    // the same sealed file unseals again, no reseal.
    let script = format!("TPM2TOOLS_TCTI={sel} tpm2_pcrread sha256:7,9 > values.txt");
    sh(&script, p);
    ok(
        &[
            "tpm",
            "sign-policy",
            "--policy-key",
            "policy.sign",
            "--pcrs",
            "7,9",
            "--values",
            "values.txt",
            "-o",
            "b.signed",
        ],
        p,
    );
    let out = ok(&["key", "tpm-check", "n.sealed", "--policy", "a.signed", "--policy", "b.signed", "--tpm", &sel], p);
    assert!(out.starts_with(&format!("key {} unseals", key.id())), "{out}");

    // A policy from another policy key, and a tampered file: refused.
    ok(&["tpm", "new-policy-key", "-o", "other.sign", "--pub-out", "other.pub"], p);
    ok(
        &[
            "tpm",
            "sign-policy",
            "--policy-key",
            "other.sign",
            "--pcrs",
            "7,9",
            "--current",
            "--tpm",
            &sel,
            "-o",
            "c.signed",
        ],
        p,
    );
    let err = fails(&["key", "tpm-check", "n.sealed", "--policy", "c.signed", "--tpm", &sel], p);
    assert!(err.contains("c.signed: signed by another policy key"), "{err}");
    let text = fs::read_to_string(p.join("b.signed")).unwrap();
    let sig = text.lines().find(|l| l.starts_with("signature ")).unwrap();
    let last = sig.chars().last().unwrap();
    let tampered = sig[..sig.len() - 1].to_owned() + if last == '0' { "1" } else { "0" };
    fs::write(p.join("t.signed"), text.replace(sig, &tampered)).unwrap();
    let err = fails(&["key", "tpm-check", "n.sealed", "--policy", "t.signed", "--tpm", &sel], p);
    assert!(err.contains("t.signed: the signature does not verify"), "{err}");
    let err = fails(&["tpm", "sign-policy", "--policy-key", "policy.pub", "--pcrs", "7", "--current", "-o", "x"], p);
    assert!(err.contains("not a policy signing key file"), "{err}");

    // Into the boot image, beside the sealed key; the key source finds both.
    fs::write(p.join("in.img"), b"").unwrap();
    let out = ok(
        &[
            "key",
            "initramfs",
            "--sealed",
            "n.sealed",
            "--policy",
            "b.signed",
            "--policy",
            "b.signed",
            "--initrd",
            "in.img",
            "-o",
            "out.img",
        ],
        p,
    );
    assert_eq!(out.matches("signed TPM policy").count(), 1, "{out}");
    let (entries, _) = read_archives(&fs::read(p.join("out.img")).unwrap()).unwrap();
    let root = p.join("root");
    for e in &entries {
        let path = root.join(&e.name);
        if e.mode & 0o170_000 == 0o040_000 {
            fs::create_dir_all(&path).unwrap();
        } else {
            fs::write(&path, &e.data).unwrap();
        }
    }
    let policy_files: Vec<_> = fs::read_dir(root.join("etc/stateless/tpm/policies")).unwrap().collect();
    assert_eq!(policy_files.len(), 1);
    let src = TpmSource { dir: root.join("etc/stateless/tpm"), selector: sel.parse().unwrap() };
    match src.lookup(key.id()).unwrap() {
        Lookup::Found(k) => assert_eq!(k.id(), key.id()),
        Lookup::Offered(_) => panic!("not found"),
    }
    // --no-lock signs exactly the PCRs given; --lock-value sets PCR 15's
    // pre-lock value (and a values file need not have PCR 15, nor can it
    // override it); a bad value is one line.
    let out = ok(
        &["tpm", "sign-policy", "--policy-key", "policy.sign", "--pcrs", "7", "--current", "--no-lock", "--tpm", &sel]
            .into_iter()
            .chain(["-o", "n.signed"])
            .collect::<Vec<_>>(),
        p,
    );
    assert!(out.contains("for PCR 7 (sha256) signed"), "{out}");
    let lock = "ab".repeat(32);
    let out = ok(
        &[
            "tpm",
            "sign-policy",
            "--policy-key",
            "policy.sign",
            "--pcrs",
            "7,15",
            "--values",
            "values.txt",
            "--lock-value",
            &lock,
            "-o",
            "l.signed",
        ],
        p,
    );
    assert!(out.contains("for PCR 7,15 (sha256) signed"), "{out}");
    assert!(fs::read_to_string(p.join("l.signed")).unwrap().contains(&format!("pcr 15 {lock}")));
    let err = fails(
        &["tpm", "sign-policy", "--policy-key", "policy.sign", "--pcrs", "7", "--values", "values.txt"]
            .into_iter()
            .chain(["--lock-value", "abc", "-o", "x.signed"])
            .collect::<Vec<_>>(),
        p,
    );
    assert!(err.contains("--lock-value: not a sha256 value (64 hex digits)"), "{err}");

    // Signed policies cover the lock PCR too: once unsealed, closed.
    let err = src.lookup(key.id()).unwrap_err().to_string();
    assert!(err.contains("PCR 15 (sha256) has moved since this boot's loader unsealed the key"), "{err}");
}

/// `statelessctl` with `stdin` as its standard input.
fn ctl_in(args: &[&str], cwd: &Path, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_statelessctl"))
        .args(args)
        .current_dir(cwd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails before it reads stdin closes the pipe early.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

#[test]
fn tpm_seal_with_a_pin_and_check_it() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let swtpm = Swtpm::start();
    let sel = swtpm.selector();
    let key = new_key(p, "site.key");
    let seal = ["key", "tpm-seal", "--key", "site.key", "--pcrs", "7", "--pin", "--tpm", &sel, "-o", "pin.sealed"];
    let o = ctl_in(&seal, p, "2468\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("sealed to PCR 7,15 (sha256) with a PIN -> pin.sealed"), "{out}");
    let sealed = read_sealed_file(&p.join("pin.sealed")).unwrap();
    assert!(sealed.needs_pin());
    assert!(fs::read_to_string(p.join("pin.sealed")).unwrap().contains("\nauth pin\n"));

    // tpm-check asks for it because the file says so.
    let check = ["key", "tpm-check", "pin.sealed", "--tpm", &sel];
    let o = ctl_in(&check, p, "2468\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8(o.stdout).unwrap().starts_with(&format!("key {} unseals", key.id())));
    let o = ctl_in(&check, p, "1357\n");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("wrong PIN"), "{err}");
    let seal_new = ["key", "tpm-seal", "--key", "site.key", "--pin", "--tpm", &sel, "-o", "new.sealed"];
    for bad in ["\n", &format!("{}\n", "9".repeat(33))] {
        let o = ctl_in(&seal_new, p, bad);
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8(o.stderr).unwrap();
        assert!(err.contains("a PIN is 1 to 32 bytes"), "{err}");
    }
}
