//! `statelessctl import ignition`: configs written to Ignition's published
//! spec (ctl/tests/ignition/, one per spec version 3.0.0–3.4.0, one using
//! every supported field, one per refused section or rule) turned into
//! layer directories, checked byte by byte, mode by mode, and through the
//! model's own loader.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use stateless_model::{Model, UnitState};

fn config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ignition").join(name)
}

fn import(cfg: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_statelessctl"))
        .args(["import", "ignition"])
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn imported(name: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("site/nodes/node42");
    let o = import(&config(name), &out, &[]);
    assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
    (d, out)
}

/// Every path below `files/`, with a trailing `/` for directories and
/// ` -> TARGET` for symlinks.
fn tree(files: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
            let t = e.file_type().unwrap();
            if t.is_symlink() {
                out.insert(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
            } else if t.is_dir() {
                out.insert(format!("{rel}/"));
                walk(root, &p, out);
            } else {
                out.insert(rel);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(files, files, &mut out);
    out
}

fn files_toml(out: &Path) -> toml::Table {
    toml::from_str(&fs::read_to_string(out.join("files.toml")).unwrap()).unwrap()
}

fn model(out: &Path) -> Model {
    let text = fs::read_to_string(out.join("model.toml")).unwrap();
    Model::load("model.toml", "node:node42", &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn every_supported_field_becomes_part_of_the_layer() {
    let (_d, out) = imported("full-3.4.0.ign");
    let files = out.join("files");
    let want: BTreeSet<String> = [
        "etc/",
        "etc/motd",
        "etc/secret",
        "etc/hosts.extra",
        "etc/localtime -> /usr/share/zoneinfo/UTC",
        "etc/app/",
        "etc/app/config.json",
        "etc/app/config.hard",
        "etc/systemd/",
        "etc/systemd/system/",
        "etc/systemd/system/app.service",
        "etc/systemd/system/app.service.d/",
        "etc/systemd/system/app.service.d/10-env.conf",
        "etc/systemd/system/sshd.service.d/",
        "etc/systemd/system/sshd.service.d/50-port.conf",
        "srv/",
        "srv/data/",
        "srv/shared/",
        "usr/",
        "usr/local/",
        "usr/local/bin/",
        "usr/local/bin/tool",
        "usr/local/bin/t -> tool",
        "var/",
        "var/lib/",
        "var/lib/app/",
        "var/lib/app/empty",
        "var/log/",
        "var/log/app/",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // Nothing else: no skipped drop-in without contents, no unit file for
    // empty contents.
    assert_eq!(tree(&files), want);

    let read = |p: &str| fs::read(files.join(p)).unwrap();
    assert_eq!(read("etc/motd"), b"Welcome to node42\n");
    assert_eq!(read("etc/secret"), b"token=s3cr3t\n");
    assert_eq!(read("etc/app/config.json"), b"{\"listen\": \":8080\", \"workers\": 4}\n".repeat(20));
    assert_eq!(read("etc/hosts.extra"), "10.0.0.1 gw\n10.0.0.2 ntp # ünïcode\n".as_bytes());
    assert_eq!(read("var/lib/app/empty"), b"");
    assert_eq!(read("usr/local/bin/tool"), b"#!/bin/sh\necho tool\n");
    assert_eq!(
        read("etc/systemd/system/app.service"),
        b"[Unit]\nDescription=App\n\n[Service]\nExecStart=/usr/local/bin/tool\n\n[Install]\nWantedBy=multi-user.target\n"
    );
    assert_eq!(read("etc/systemd/system/app.service.d/10-env.conf"), b"[Service]\nEnvironment=A=1\n");
    assert_eq!(read("etc/systemd/system/sshd.service.d/50-port.conf"), b"[Service]\nEnvironment=PORT=2222\n");

    // The hard link is one inode with its target.
    let a = fs::metadata(files.join("etc/app/config.json")).unwrap();
    let b = fs::metadata(files.join("etc/app/config.hard")).unwrap();
    assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));

    // Modes on disk (permission bits; special bits live in files.toml only).
    assert_eq!(mode(&files.join("etc/secret")), 0o600);
    assert_eq!(mode(&files.join("etc/app/config.json")), 0o640);
    assert_eq!(mode(&files.join("usr/local/bin/tool")), 0o755);
    assert_eq!(mode(&files.join("etc/motd")), 0o644);
    assert_eq!(mode(&files.join("etc/hosts.extra")), 0o644);

    let want: toml::Table = toml::from_str(
        r#"
        "etc/motd" = { mode = "0644" }
        "etc/secret" = { mode = "0600", uid = 0, gid = 0 }
        "etc/app/config.json" = { mode = "0640", uid = 2001, gid = 3000 }
        "etc/app/config.hard" = { mode = "0640", uid = 2001, gid = 3000 }
        "usr/local/bin/tool" = { mode = "0755", uid = 0, gid = 0 }
        "usr/local/bin/t" = { uid = 2001, gid = 3001 }
        "srv/data" = { mode = "0750", uid = 2001, gid = 3000 }
        "srv/shared" = { mode = "1777", gid = 3001 }
        "var/log/app" = { mode = "0755" }
        "#,
    )
    .unwrap();
    assert_eq!(files_toml(&out), want);
    // The documented shape: one inline table per line, paths without a
    // leading slash.
    let text = fs::read_to_string(out.join("files.toml")).unwrap();
    assert!(text.contains("\n\"etc/secret\" = { mode = \"0600\", uid = 0, gid = 0 }\n"), "{text}");

    let m = model(&out);
    let groups: Vec<(&str, u32)> = m.groups().values().map(|g| (g.value().name.as_str(), g.value().gid)).collect();
    assert_eq!(groups, [("devs", 3001), ("ops", 3000)]);
    let alice = m.users()["alice"].value();
    assert_eq!(alice.uid, 2001);
    assert_eq!(alice.gid, Some(3000), "primaryGroup ops");
    assert_eq!(alice.groups, ["devs", "wheel"]);
    assert_eq!(alice.comment.as_deref(), Some("Alice Admin"));
    assert_eq!(alice.shell, "/bin/zsh");
    assert_eq!(alice.home, "/home/alice");
    assert_eq!(alice.password, "$6$rounds=4096$salt$hashhashhash");
    assert_eq!(
        alice.ssh_authorized_keys,
        [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAlice alice@example.org",
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB alice@laptop"
        ]
    );
    // No passwordHash: no usable password, as Ignition leaves it.
    let bob = m.users()["bob"].value();
    assert_eq!((bob.uid, bob.gid, bob.password.as_str()), (2002, None, "*"));
    assert_eq!((bob.home.as_str(), bob.shell.as_str()), ("/home/bob", "/bin/bash"));
    let units: Vec<(&str, UnitState)> = m.services().iter().map(|(k, v)| (k.as_str(), *v.value())).collect();
    assert_eq!(
        units,
        [
            ("app.service", UnitState::Enable),
            ("cups.service", UnitState::Disable),
            ("debug-shell.service", UnitState::Mask),
            ("getty@tty2.service", UnitState::Enable),
        ]
    );
    assert!(m.hostname().is_none() && m.sysctl().is_empty() && m.plugins().is_empty());

    let stdout = String::from_utf8(import(&config("full-3.4.0.ign"), &out, &["--force"]).stdout).unwrap();
    assert!(stdout.contains("(spec 3.4.0): 9 files, 3 directories, 3 links, 2 users, 2 groups, 4 units"), "{stdout}");
}

#[test]
fn every_spec_version_from_3_0_to_3_4_imports() {
    let (_d, out) = imported("basic-3.0.0.ign");
    assert_eq!(fs::read(out.join("files/etc/hostname")).unwrap(), b"node42\n");
    let m = model(&out);
    assert_eq!(m.users()["core"].value().ssh_authorized_keys.len(), 1);
    assert_eq!(*m.services()["chronyd.service"].value(), UnitState::Enable);

    let (_d, out) = imported("basic-3.1.0.ign");
    assert_eq!(fs::read(out.join("files/etc/issue")).unwrap(), b"Hello\n");
    assert_eq!(files_toml(&out), toml::from_str::<toml::Table>(r#""var/lib/app" = { mode = "0700" }"#).unwrap());
    assert!(model(&out).is_empty());

    let (_d, out) = imported("basic-3.2.0.ign");
    assert_eq!(fs::read_link(out.join("files/etc/app.conf")).unwrap(), Path::new("/var/lib/app/app.conf"));
    let m = model(&out);
    let app = m.users()["app"].value();
    assert_eq!((app.uid, app.gid, app.home.as_str()), (4000, Some(4000), "/var/lib/app"));
    assert_eq!(m.groups()["app"].value().gid, 4000);

    let (_d, out) = imported("basic-3.3.0.ign");
    assert_eq!(
        fs::read(out.join("files/etc/systemd/system/var-lib.mount")).unwrap(),
        b"[Mount]\nWhat=/dev/vdb\nWhere=/var/lib\n"
    );
    assert_eq!(*model(&out).services()["node-exporter.service"].value(), UnitState::Mask);
    assert_eq!(files_toml(&out), toml::Table::new());
}

/// Every refusal: exit 1, one line per problem naming its JSON path, in
/// config order, then one summary line; and no --out directory.
#[test]
fn every_unsupported_part_is_listed_and_nothing_is_written() {
    let cases: &[(&str, &[&str])] = &[
        ("refuse_disks.ign", &["storage.disks[0]", "storage.disks[1]"]),
        ("refuse_raid.ign", &["storage.raid[0]"]),
        ("refuse_filesystems.ign", &["storage.filesystems[0]", "storage.filesystems[1]"]),
        ("refuse_luks.ign", &["storage.luks[0]"]),
        (
            "refuse_remote_sources.ign",
            &[
                "storage.files[0].contents.source",
                "storage.files[0].contents.verification",
                "storage.files[1].contents.httpHeaders",
                "storage.files[1].contents.source",
                "storage.files[2].contents.source",
                "storage.files[3].contents.source",
                "storage.files[4].contents.source",
                "storage.files[5].contents.source",
                "storage.files[6].contents.source",
            ],
        ),
        ("refuse_append.ign", &["storage.files[0].append[0]", "storage.files[0].append[1]"]),
        ("refuse_kernel_arguments.ign", &["kernelArguments.shouldExist[0]", "kernelArguments.shouldNotExist[0]"]),
        ("refuse_config_merge_replace.ign", &["ignition.config.merge[0]", "ignition.config.replace"]),
        ("refuse_tls_certificate_authorities.ign", &["ignition.security.tls.certificateAuthorities[0]"]),
        ("refuse_proxy.ign", &["ignition.proxy.httpProxy", "ignition.proxy.httpsProxy", "ignition.proxy.noProxy"]),
        ("refuse_timeouts.ign", &["ignition.timeouts.httpResponseHeaders", "ignition.timeouts.httpTotal"]),
        ("refuse_unknown_key.ign", &["storage.files[0].mde"]),
        ("refuse_unknown_top_key.ign", &["networkd"]),
        (
            "refuse_shape_errors.ign",
            &[
                "extra",
                "ignition.foo",
                "passwd.users[0].uid",
                "storage.files[0].contents.src",
                "storage.files[0].mde",
                "storage.files[1].usr",
                "storage.disks[0]",
            ],
        ),
        ("refuse_version_unsupported.ign", &["ignition.version"]),
        ("refuse_version_2x.ign", &["ignition.version"]),
        ("refuse_version_missing.ign", &["ignition.version"]),
        (
            "refuse_key_newer_than_version.ign",
            &[
                "ignition.proxy",
                "kernelArguments",
                "passwd.users[0].shouldExist",
                "storage.files[0].contents.verification.hash",
            ],
        ),
        (
            "refuse_files.ign",
            &[
                "storage.files[0].path",
                "storage.files[1].path",
                "storage.files[2].mode",
                "storage.files[3].mode",
                "storage.files[4].contents.source",
                "storage.files[5].contents.compression",
                "storage.files[6].contents.compression",
                "storage.files[7].contents.verification.hash",
                "storage.files[8].overwrite",
                "storage.files[9].path",
                "storage.files[11]",
                "storage.files[12].user",
                "storage.files[13].user.name",
                "storage.files[13].group.name",
                "storage.files[14].contents.source",
                "storage.files[15].user.name",
                "storage.files[15].group.name",
            ],
        ),
        (
            "refuse_links.ign",
            &[
                "storage.links[0].target",
                "storage.links[1].target",
                "storage.links[2].target",
                "storage.links[3].target",
                "storage.links[4].target",
                "storage.links[5]",
                "storage.links[7]",
            ],
        ),
        (
            "refuse_passwd.ign",
            &[
                "passwd.groups[0].passwordHash",
                "passwd.groups[1].gid",
                "passwd.groups[2].shouldExist",
                "passwd.users[0].name",
                "passwd.users[1]",
                "passwd.users[2].uid",
                "passwd.users[3].noCreateHome",
                "passwd.users[4].shouldExist",
                "passwd.users[5].primaryGroup",
                "passwd.users[6].noUserGroup",
                "passwd.users[7]",
                "passwd.users[8]",
            ],
        ),
        (
            "refuse_units.ign",
            &[
                "systemd.units[0].mask",
                "systemd.units[1]",
                "systemd.units[2]",
                "systemd.units[3].name",
                "systemd.units[4].name",
                "systemd.units[5].dropins[0].name",
                "systemd.units[5].dropins[1].name",
                "systemd.units[7].name",
                "systemd.units[8].enabled",
            ],
        ),
    ];
    let d = tempfile::tempdir().unwrap();
    for (name, want) in cases {
        let out = d.path().join("out");
        let o = import(&config(name), &out, &[]);
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        let prefix = format!("statelessctl: {}: ", config(name).display());
        let lines: Vec<&str> = err.lines().collect();
        let (summary, problems) = lines.split_last().unwrap();
        let got: Vec<&str> = problems
            .iter()
            .map(|l| {
                let rest = l.strip_prefix(&prefix).unwrap_or_else(|| panic!("{name}: {l}"));
                let (path, why) = rest.split_once(": ").unwrap();
                assert!(!why.is_empty(), "{name}: {l}");
                path
            })
            .collect();
        assert_eq!(got, *want, "{name}:\n{err}");
        assert!(
            summary.ends_with(&format!("{} part(s) cannot be imported; nothing was written", want.len())),
            "{name}: {summary}"
        );
        assert!(!out.exists(), "{name}: wrote {}", out.display());
        // No staging directory left behind either.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0, "{name}");
    }
}

#[test]
fn refusals_say_why() {
    let d = tempfile::tempdir().unwrap();
    let err = |name: &str| String::from_utf8(import(&config(name), &d.path().join("out"), &[]).stderr).unwrap();
    let e = err("refuse_remote_sources.ign");
    assert!(e.contains("storage.files[0].contents.source: a remote https source is not fetched"), "{e}");
    let e = err("refuse_files.ign");
    assert!(e.contains("storage.files[7].contents.verification.hash: the contents do not match"), "{e}");
    assert!(e.contains("storage.files[11]: /etc/dup is also written by storage.files[10]"), "{e}");
    let e = err("refuse_passwd.ign");
    assert!(e.contains("passwd.users[1]: uid 0 of \"root0\""), "{e}");
    assert!(e.contains("passwd.groups[0].passwordHash: group passwords cannot be expressed"), "{e}");
    let e = err("refuse_unknown_key.ign");
    assert!(e.contains("storage.files[0].mde: unknown field `mde`"), "{e}");
    let e = err("refuse_version_unsupported.ign");
    assert!(e.contains("ignition.version: spec version \"3.5.0\" is not supported"), "{e}");
    let e = err("refuse_append.ign");
    assert!(e.contains("append cannot be expressed"), "{e}");
}

#[test]
fn a_non_empty_out_is_replaced_only_with_force_and_only_on_success() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("node42");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("old"), "old").unwrap();

    let o = import(&config("basic-3.0.0.ign"), &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("is not empty; use --force"), "{err}");
    assert_eq!(fs::read(out.join("old")).unwrap(), b"old");

    // A refused import with --force leaves the old layer as it was.
    let o = import(&config("refuse_disks.ign"), &out, &["--force"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(fs::read(out.join("old")).unwrap(), b"old");

    let o = import(&config("basic-3.0.0.ign"), &out, &["--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.join("old").exists());
    assert_eq!(fs::read(out.join("files/etc/hostname")).unwrap(), b"node42\n");
    // Only the layer is left beside it: the old tree and the staging
    // directory are gone.
    let names: Vec<_> = fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["node42"]);

    // An empty directory is fine without --force.
    let empty = d.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert!(import(&config("basic-3.1.0.ign"), &empty, &[]).status.success());
    assert_eq!(fs::read(empty.join("files/etc/issue")).unwrap(), b"Hello\n");

    // --out must be a directory.
    let file = d.path().join("file");
    fs::write(&file, "x").unwrap();
    let o = import(&config("basic-3.1.0.ign"), &file, &["--force"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn inline_configs_cover_the_edge_cases() {
    let d = tempfile::tempdir().unwrap();
    let run = |json: &str| {
        let cfg = d.path().join("c.ign");
        fs::write(&cfg, json).unwrap();
        let out = d.path().join("out");
        let _ = fs::remove_dir_all(&out);
        let o = import(&cfg, &out, &[]);
        (o.status.code(), String::from_utf8(o.stderr).unwrap(), out)
    };
    // Not JSON at all, or not an object.
    let (code, err, _) = run("{not json");
    assert_eq!(code, Some(1));
    assert!(err.contains("$: not a JSON document"), "{err}");
    let (code, _, _) = run("[]");
    assert_eq!(code, Some(1));
    // A wrong type names its path.
    let (_, err, _) = run(r#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/a","mode":"0644"}]}}"#);
    assert!(err.contains("storage.files[0].mode: invalid type: string"), "{err}");
    // A group owner by name resolves through passwd.groups; a directory's
    // mode defaults to 0755 and is recorded.
    let (code, err, out) = run(r#"{"ignition":{"version":"3.2.0"},"passwd":{"groups":[{"name":"web","gid":33}]},
            "storage":{"directories":[{"path":"/srv/www","group":{"name":"web"}}]}}"#);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(files_toml(&out), toml::from_str::<toml::Table>(r#""srv/www" = { mode = "0755", gid = 33 }"#).unwrap());
    // Null is Ignition's "not set".
    let (code, err, out) = run(
        r#"{"ignition":{"version":"3.4.0","config":null},"storage":{"files":[{"path":"/a","mode":null,"contents":{"source":"data:,x","compression":null}}]}}"#,
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(fs::read(out.join("files/a")).unwrap(), b"x");
    // A symlink target that stays inside the root by climbing back up.
    let (code, err, out) =
        run(r#"{"ignition":{"version":"3.4.0"},"storage":{"links":[{"path":"/etc/a/b","target":"../../usr/x"}]}}"#);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(fs::read_link(out.join("files/etc/a/b")).unwrap(), Path::new("../../usr/x"));
    // An absolute target stays inside the node's root whatever it holds.
    let (code, err, out) =
        run(r#"{"ignition":{"version":"3.4.0"},"storage":{"links":[{"path":"/r","target":"/../../x"}]}}"#);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(fs::read_link(out.join("files/r")).unwrap(), Path::new("/../../x"));
    // Paths that need escaping in TOML keep their bytes in files.toml.
    let (code, err, out) =
        run(r#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/we\"ird\\näme","mode":256}]}}"#);
    assert_eq!(code, Some(0), "{err}");
    let t = files_toml(&out);
    assert_eq!(t["etc/we\"ird\\näme"]["mode"].as_str(), Some("0400"));
    assert!(out.join("files/etc/we\"ird\\näme").is_file());
    // A unit file and a storage file on the same path.
    let (_, err, _) =
        run(r#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/etc/systemd/system/a.service"}]},
            "systemd":{"units":[{"name":"a.service","contents":"[Unit]\n"}]}}"#);
    assert!(
        err.contains("systemd.units[0].contents: /etc/systemd/system/a.service is also written by storage.files[0]"),
        "{err}"
    );
    // A truncated gzip stream.
    let (_, err, _) = run(
        r#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/a","contents":{"source":"data:;base64,H4sIAAAAAAAA/w==","compression":"gzip"}}]}}"#,
    );
    assert!(err.contains("storage.files[0].contents.compression: not valid gzip data"), "{err}");
}
