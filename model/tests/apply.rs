//! `apply` against temp roots laid out like a real base image.

// Integration tests are their own crate: the workspace lints for
// untrusted input do not apply to fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use stateless_model::{ApplyError, Model, apply};

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nbin:x:1:1:bin:/bin:/sbin/nologin\nsshd:x:74:74:Privilege-separated SSH:/usr/share/empty.sshd:/sbin/nologin\nbob:x:2002:2002::/home/bob:/bin/bash\n";
const GROUP: &str = "root:x:0:\nbin:x:1:\nwheel:x:10:bob\nsshd:x:74:\nbob:x:2002:\n";
const SHADOW: &str =
    "root:!locked::0:99999:7:::\nbin:*:19000:0:99999:7:::\nsshd:!!:19000::::::\nbob:$6$bob::0:99999:7:::\n";
const GSHADOW: &str = "root:::\nbin:::\nwheel:::bob\nsshd:!::\nbob:!::\n";
const SSHD: &str = "# defaults\n#PermitRootLogin prohibit-password\nPermitRootLogin yes\nPasswordAuthentication yes\n\nMatch User bob\n\tPasswordAuthentication yes\n";
const UNIT: &str = "[Unit]\nDescription=Acme agent\n\n[Service]\nExecStart=/usr/bin/acme-agent\n\n[Install]\nWantedBy=multi-user.target\nAlias=acme.service\n";

fn base() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    for (p, t, mode) in [
        ("etc/passwd", PASSWD, 0o644),
        ("etc/group", GROUP, 0o644),
        ("etc/shadow", SHADOW, 0o000),
        ("etc/gshadow", GSHADOW, 0o000),
        ("etc/ssh/sshd_config", SSHD, 0o600),
        ("usr/lib/systemd/system/acme-agent.service", UNIT, 0o644),
        ("usr/lib/systemd/system/cups.service", "[Install]\nWantedBy=multi-user.target\n", 0o644),
        ("usr/lib/systemd/system/debug-shell.service", "[Service]\n", 0o644),
        ("usr/lib/systemd/system/getty@.service", "[Install]\nWantedBy=getty.target\n", 0o644),
    ] {
        let p = r.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, t).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::create_dir_all(r.join("etc/systemd/system/multi-user.target.wants")).unwrap();
    symlink("/usr/lib/systemd/system/cups.service", r.join("etc/systemd/system/multi-user.target.wants/cups.service"))
        .unwrap();
    fs::create_dir_all(r.join("home/bob")).unwrap();
    // Merged /usr: the unit search must skip the link, not follow it.
    symlink("usr/lib", r.join("lib")).unwrap();
    d
}

const MODEL: &str = r#"
hostname = "node42.example.org"
[[users]]
name = "alice"
uid = 2001
groups = ["wheel", "ops"]
comment = "Alice"
password_hash = "$6$salt$hash"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3Nza alice@example.org"]
[[users]]
name = "bob"
uid = 2002
locked = true
[[groups]]
name = "ops"
gid = 3000
[services]
enable = ["acme-agent.service", "getty@tty2.service"]
disable = ["cups.service"]
mask = ["debug-shell.service"]
[sysctl]
"net.ipv4.ip_forward" = "1"
[modules]
load = ["dummy"]
options = { dummy = "numdummies=2" }
blacklist = ["pcspkr"]
[firewall]
allow = ["tcp/22", "udp/123", "tcp/8000-8080"]
[[edits]]
file = "/etc/ssh/sshd_config"
set = { PermitRootLogin = "no" }
unset = ["PasswordAuthentication"]
[[plugins]]
name = "acme-agent"
vendor = "acme"
version = "1.2.3"
"#;

fn model(text: &str) -> Model {
    Model::load("model.toml", "test", text).unwrap()
}

fn read(r: &Path, p: &str) -> String {
    fs::read_to_string(r.join(p)).unwrap()
}

/// Every file under the root with its contents or link target.
fn snapshot(r: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![r.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(r).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                out.push((rel, format!("-> {}", fs::read_link(&p).unwrap().display())));
            } else if m.is_dir() {
                out.push((rel, "dir".into()));
                stack.push(p);
            } else {
                out.push((rel, fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn full_model_renders_every_part() {
    let d = base();
    let r = d.path();
    let done = apply(&model(MODEL), r).unwrap();
    assert!(done.written.contains(&"etc/passwd".to_owned()), "{done:?}");

    let passwd = read(r, "etc/passwd");
    assert!(passwd.starts_with(PASSWD.lines().next().unwrap()), "base entries kept");
    assert!(passwd.contains("sshd:x:74:74:Privilege-separated SSH:/usr/share/empty.sshd:/sbin/nologin\n"));
    assert!(passwd.contains("alice:x:2001:2001:Alice:/home/alice:/bin/bash\n"), "{passwd}");
    assert!(passwd.contains("bob:x:2002:2002::/home/bob:/bin/bash\n"), "{passwd}");
    let group = read(r, "etc/group");
    assert!(group.contains("wheel:x:10:bob,alice\n"), "{group}");
    assert!(group.contains("ops:x:3000:alice\n"), "{group}");
    assert!(group.contains("alice:x:2001:\n"), "{group}");
    let shadow = read(r, "etc/shadow");
    assert!(shadow.contains("alice:$6$salt$hash::0:99999:7:::\n"), "{shadow}");
    assert!(shadow.contains("bob:*::0:99999:7:::\n"), "{shadow}");
    assert!(shadow.contains("bin:*:19000:0:99999:7:::\n"));
    assert_eq!(fs::metadata(r.join("etc/shadow")).unwrap().mode() & 0o777, 0, "mode kept");
    assert!(read(r, "etc/gshadow").contains("wheel:::bob,alice\n"));

    let home = fs::metadata(r.join("home/alice")).unwrap();
    assert_eq!((home.uid(), home.gid(), home.mode() & 0o777), (2001, 2001, 0o700));
    let ssh = fs::metadata(r.join("home/alice/.ssh")).unwrap();
    assert_eq!((ssh.uid(), ssh.mode() & 0o777), (2001, 0o700));
    let keys = fs::metadata(r.join("home/alice/.ssh/authorized_keys")).unwrap();
    assert_eq!((keys.uid(), keys.gid(), keys.mode() & 0o777), (2001, 2001, 0o600));
    assert_eq!(read(r, "home/alice/.ssh/authorized_keys"), "ssh-ed25519 AAAAC3Nza alice@example.org\n");

    let link = |p: &str| fs::read_link(r.join(p)).unwrap().display().to_string();
    assert_eq!(
        link("etc/systemd/system/multi-user.target.wants/acme-agent.service"),
        "/usr/lib/systemd/system/acme-agent.service"
    );
    assert_eq!(link("etc/systemd/system/acme.service"), "/usr/lib/systemd/system/acme-agent.service");
    assert_eq!(
        link("etc/systemd/system/getty.target.wants/getty@tty2.service"),
        "/usr/lib/systemd/system/getty@.service"
    );
    assert_eq!(link("etc/systemd/system/debug-shell.service"), "/dev/null");
    assert!(fs::symlink_metadata(r.join("etc/systemd/system/multi-user.target.wants/cups.service")).is_err());

    assert_eq!(read(r, "etc/hostname"), "node42.example.org\n");
    assert!(read(r, "etc/sysctl.d/90-stateless.conf").contains("net.ipv4.ip_forward = 1\n"));
    assert!(read(r, "etc/modules-load.d/stateless.conf").ends_with("\ndummy\n"));
    let modprobe = read(r, "etc/modprobe.d/stateless.conf");
    assert!(modprobe.contains("options dummy numdummies=2\n") && modprobe.contains("blacklist pcspkr\n"));
    let nft = read(r, "etc/nftables.d/stateless.nft");
    assert!(nft.contains("tcp dport { 22, 8000-8080 } accept") && nft.contains("udp dport { 123 } accept"), "{nft}");
    let plugins: serde_json::Value = serde_json::from_str(&read(r, "etc/stateless/plugins.json")).unwrap();
    assert_eq!(plugins["plugins"][0]["version"], "1.2.3");
    assert_eq!(plugins["plugins"][0]["state"], "installed");

    assert_eq!(
        read(r, "etc/ssh/sshd_config"),
        "# defaults\n#PermitRootLogin prohibit-password\nPermitRootLogin no\n\nMatch User bob\n\tPasswordAuthentication yes\n"
    );
    assert_eq!(fs::metadata(r.join("etc/ssh/sshd_config")).unwrap().mode() & 0o777, 0o600);

    // Applying twice gives the same root.
    let before = snapshot(r);
    apply(&model(MODEL), r).unwrap();
    assert_eq!(snapshot(r), before);
}

#[test]
fn refusals_change_nothing() {
    type Plant = fn(&Path);
    let user =
        "[[users]]\nname = \"alice\"\nuid = 2001\nlocked = true\nssh_authorized_keys = [\"ssh-ed25519 AAAA a@b\"]\n";
    type Want = fn(&ApplyError) -> bool;
    let cases: Vec<(&str, String, Plant, Want)> = vec![
        ("uid clash", "[[users]]\nname = \"carol\"\nuid = 2002\nlocked = true\n".into(), |_| {},
         |e| matches!(e, ApplyError::Clash { ours, theirs, .. } if ours.contains("carol") && theirs.contains("bob"))),
        ("name clash", "[[users]]\nname = \"bob\"\nuid = 2005\nlocked = true\n".into(), |_| {},
         |e| matches!(e, ApplyError::Clash { ours, theirs, .. } if ours.contains("2005") && theirs.contains("2002"))),
        ("gid clash", "[[groups]]\nname = \"ops\"\ngid = 10\n".into(), |_| {},
         |e| matches!(e, ApplyError::Clash { theirs, .. } if theirs.contains("wheel"))),
        ("model uid clash", "[[users]]\nname = \"x1\"\nuid = 3001\nlocked = true\n[[users]]\nname = \"x2\"\nuid = 3001\nlocked = true\n".into(), |_| {},
         |e| matches!(e, ApplyError::Clash { .. })),
        ("unknown group", "[[users]]\nname = \"x1\"\nuid = 3001\nlocked = true\ngroups = [\"nope\"]\n".into(), |_| {},
         |e| matches!(e, ApplyError::UnknownGroup { .. })),
        ("missing unit", "[services]\nenable = [\"nope.service\"]\n".into(), |_| {},
         |e| matches!(e, ApplyError::UnknownUnit { .. })),
        ("unit without install", "[services]\nenable = [\"debug-shell.service\"]\n".into(), |_| {},
         |e| matches!(e, ApplyError::Unit { .. })),
        ("edit of missing file", "[[edits]]\nfile = \"/etc/nope.conf\"\nset = { a = \"1\" }\n".into(), |_| {},
         |e| matches!(e, ApplyError::Edit { .. })),
        ("unparsable edit", "[[edits]]\nfile = \"/etc/x.conf\"\nset = { a = \"1\" }\n".into(),
         |r| fs::write(r.join("etc/x.conf"), "a=1\nnot a setting\n").unwrap(),
         |e| matches!(e, ApplyError::Parse { line: 2, .. })),
        ("symlink at etc/shadow", user.into(),
         |r| { fs::remove_file(r.join("etc/shadow")).unwrap(); symlink("/etc/shadow", r.join("etc/shadow")).unwrap() },
         |e| matches!(e, ApplyError::Symlink { path } if path == "etc/shadow")),
        ("symlink at home", user.into(),
         |r| symlink("/root", r.join("home/alice")).unwrap(),
         |e| matches!(e, ApplyError::Symlink { path } if path == "home/alice")),
        ("symlink at home parent", user.into(),
         |r| { fs::rename(r.join("home"), r.join("var-home")).unwrap(); symlink("/tmp", r.join("home")).unwrap() },
         |e| matches!(e, ApplyError::Symlink { path } if path == "home")),
        ("symlink at .ssh", user.into(),
         |r| { fs::create_dir(r.join("home/alice")).unwrap(); symlink("/root/.ssh", r.join("home/alice/.ssh")).unwrap() },
         |e| matches!(e, ApplyError::Symlink { .. })),
        ("symlink at hostname", "hostname = \"n\"\n".into(),
         |r| symlink("/etc/passwd", r.join("etc/hostname")).unwrap(),
         |e| matches!(e, ApplyError::Symlink { .. })),
        ("symlink at edited file", "[[edits]]\nfile = \"/etc/ssh/sshd_config\"\nset = { A = \"1\" }\n".into(),
         |r| { fs::remove_file(r.join("etc/ssh/sshd_config")).unwrap(); symlink("/etc/ssh/sshd_config", r.join("etc/ssh/sshd_config")).unwrap() },
         |e| matches!(e, ApplyError::Symlink { .. })),
        ("mask of a unit file in etc", "[services]\nmask = [\"local.service\"]\n".into(),
         |r| fs::write(r.join("etc/systemd/system/local.service"), "[Service]\n").unwrap(),
         |e| matches!(e, ApplyError::Unit { .. })),
        ("edit of a file the model writes", "hostname = \"n\"\n[[edits]]\nfile = \"/etc/hostname\"\nformat = \"space\"\nset = { a = \"1\" }\n".into(),
         |r| fs::write(r.join("etc/hostname"), "old\n").unwrap(),
         |e| matches!(e, ApplyError::Conflict { .. })),
    ];
    for (name, text, plant, want) in cases {
        let d = base();
        let r = d.path();
        plant(r);
        // A user at the end makes sure an earlier refusal also stops passwd.
        let m = model(&format!("{text}\n[sysctl]\n\"a.b\" = \"1\"\n"));
        let before = snapshot(r);
        let err = apply(&m, r).unwrap_err();
        assert!(want(&err), "{name}: {err}");
        let line = err.to_string();
        assert!(!line.contains('\n') && !line.is_empty(), "{name}: {line}");
        assert_eq!(snapshot(r), before, "{name}: the root changed");
    }
}

#[test]
fn empty_model_changes_nothing() {
    let d = base();
    let before = snapshot(d.path());
    let done = apply(&Model::default(), d.path()).unwrap();
    assert_eq!(done, Default::default());
    assert_eq!(snapshot(d.path()), before);
}

#[test]
fn disable_removes_wants_and_alias_links_only() {
    let d = base();
    let r = d.path();
    apply(&model("[services]\nenable = [\"acme-agent.service\"]\n"), r).unwrap();
    assert!(fs::symlink_metadata(r.join("etc/systemd/system/acme.service")).is_ok());
    let done = apply(&model("[services]\ndisable = [\"acme-agent.service\", \"cups.service\"]\n"), r).unwrap();
    let mut removed = done.removed.clone();
    removed.sort();
    assert_eq!(
        removed,
        [
            "etc/systemd/system/acme.service",
            "etc/systemd/system/multi-user.target.wants/acme-agent.service",
            "etc/systemd/system/multi-user.target.wants/cups.service",
        ]
    );
    // The unit files themselves stay.
    assert!(r.join("usr/lib/systemd/system/acme-agent.service").is_file());
}

#[test]
fn a_plugin_layers_units_are_linked_and_can_be_enabled() {
    use stateless_model::layer::LayerMeta;
    let d = base();
    let r = d.path();
    let unit_dir = r.join("opt/vend/tool/systemd");
    fs::create_dir_all(&unit_dir).unwrap();
    fs::write(
        unit_dir.join("tool.service"),
        "[Service]\nExecStart=/opt/vend/tool/bin/tool\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    fs::write(unit_dir.join("README"), "not a unit\n").unwrap();
    let meta =
        LayerMeta::parse("layer.toml", "kind = \"plugin\"\nname = \"tool\"\nvendor = \"vend\"\nversion = \"2.0\"\n")
            .unwrap();
    let mut m = Model::load("model.toml", "plugin tool", "[services]\nenable = [\"tool.service\"]\n").unwrap();
    m.add_plugin_layer("plugin tool", &meta, 7);
    apply(&m, r).unwrap();
    let link = |p: &str| fs::read_link(r.join(p)).unwrap().display().to_string();
    assert_eq!(link("etc/systemd/system/tool.service"), "/opt/vend/tool/systemd/tool.service");
    assert_eq!(link("etc/systemd/system/multi-user.target.wants/tool.service"), "/opt/vend/tool/systemd/tool.service");
    assert!(fs::symlink_metadata(r.join("etc/systemd/system/README")).is_err());
    let plugins = read(r, "etc/stateless/plugins.json");
    assert!(plugins.contains("\"generation\": 7") && plugins.contains("\"vendor\": \"vend\""), "{plugins}");
    // Applying again (the next boot's root keeps the link) is fine.
    apply(&m, r).unwrap();

    // A plugin unit never replaces one the root has.
    let d = base();
    let r = d.path();
    fs::create_dir_all(r.join("opt/vend/tool/systemd")).unwrap();
    fs::write(r.join("opt/vend/tool/systemd/cups.service"), "[Install]\nWantedBy=multi-user.target\n").unwrap();
    fs::write(r.join("etc/systemd/system/cups.service"), "[Service]\n").unwrap();
    let mut m = Model::default();
    m.add_plugin_layer("plugin tool", &meta, 1);
    let err = apply(&m, r).unwrap_err();
    assert!(matches!(err, ApplyError::Unit { .. }), "{err}");
    assert!(err.to_string().contains("already has"), "{err}");
}
