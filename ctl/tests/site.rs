//! `statelessctl site check|build|diff`, `model show` and `plugins`:
//! refusals name file and line; builds are reproducible and incremental;
//! per-node output stays in node layers; bundles open with their key.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn ctl(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_statelessctl")).args(args).current_dir(cwd).output().unwrap()
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let o = ctl(args, cwd);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

const SITE_TOML: &str = r#"[vars]
domain = "example.org"

[defaults]
plugins = ["acme-agent"]

[groups.compute]
vars = { role = "compute" }

[groups.rack7]
groups = ["compute"]
vars = { ntp = "10.0.7.1" }

[groups.rack8]
vars = { ntp = "10.0.8.1" }

[nodes.n1]
groups = ["rack7"]
vars = { ip = "10.0.7.11" }

[nodes.n2]
groups = ["rack8"]
"#;

/// A site with a default, two groups, two nodes and a plugin, keys in
/// `keys/`, a signing key, and the data directory `data/`.
fn site() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("site");
    write(&s, "site.toml", SITE_TOML);
    write(&s, "default/files/etc/motd.tmpl", "welcome to {{ domain }}\n");
    write(&s, "default/files/etc/whoami.tmpl", "I am {{ node }} in {{ groups | join(',') }}\n");
    write(&s, "default/model.toml", "[[users]]\nname = \"alice\"\nuid = 2001\nlocked = true\n");
    write(&s, "groups/rack7/files/etc/ntp.conf.tmpl", "server {{ ntp }}\n");
    write(&s, "groups/rack7/files/etc/rack", "rack7\n");
    write(&s, "groups/rack7/model.toml", "[sysctl]\n\"net.ipv4.ip_forward\" = \"1\"\n");
    write(&s, "groups/rack8/files/etc/rack", "rack8\n");
    write(&s, "nodes/n1/files/etc/secret", "s3cret\n");
    write(&s, "nodes/n1/files.toml", "[\"etc/secret\"]\nmode = \"0600\"\nuid = 0\ngid = 0\n");
    write(&s, "nodes/n1/model.toml", "hostname = \"{{ node }}.{{ domain }}\"\n");
    write(&s, "plugins/acme-agent/plugin.toml", "name = \"acme-agent\"\nvendor = \"acme\"\nversion = \"1.2.3\"\n");
    write(&s, "plugins/acme-agent/files/opt/acme/acme-agent/agent.conf", "agent\n");
    write(&s, "plugins/acme-agent/model.toml", "[firewall]\nallow = [\"tcp/9100\"]\n");
    fs::create_dir(d.path().join("keys")).unwrap();
    ok(&["key", "new", "-o", "keys/site.key"], d.path());
    ok(&["key", "new-signing", "-o", "pub.sign"], d.path());
    d
}

fn build(d: &Path, extra: &[&str]) -> String {
    let mut args = vec!["site", "build", "site", "--keys", "keys", "--sign", "pub.sign", "--data", "data"];
    args.extend_from_slice(extra);
    ok(&args, d)
}

/// Every file under `dir` with its bytes, for "nothing changed" checks.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if !dir.exists() {
        return out;
    }
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

fn generation(d: &Path, rel: &str) -> u64 {
    let out = ok(&["bundle", "inspect", "--json", &format!("data/{rel}")], d);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["generation"].as_u64().unwrap()
}

fn open(d: &Path, rel: &str, key_args: &[&str], out: &str) -> String {
    let key = format!("{out}.key");
    let mut args = vec!["key", "derive", "--site", "keys/site.key", "-o", key.as_str()];
    args.extend_from_slice(key_args);
    ok(&args, d);
    ok(&["bundle", "open", &format!("data/{rel}"), "--key", &key, "-o", out], d);
    ok(&["bundle", "inspect", &format!("data/{rel}")], d)
}

#[test]
fn a_good_site_checks() {
    let d = site();
    let out = ok(&["site", "check", "site"], d.path());
    assert!(out.contains("OK"), "{out}");
}

#[test]
fn bad_input_is_refused_with_file_and_line() {
    type Mutate = fn(&Path);
    let cases: Vec<(&str, Mutate, &str)> = vec![
        (
            "template syntax",
            |s| write(s, "default/files/etc/motd.tmpl", "ok\n{{ domain \n"),
            "default/files/etc/motd.tmpl:2: syntax error",
        ),
        (
            "undefined variable",
            |s| write(s, "default/files/etc/motd.tmpl", "ok\n{{ nope }}\n"),
            "default/files/etc/motd.tmpl:2: undefined variable nope",
        ),
        (
            "undefined for one node",
            |s| write(s, "default/files/etc/ip.tmpl", "\n\n{{ ip }}\n"),
            "default/files/etc/ip.tmpl:3: undefined variable ip (rendering for node n2)",
        ),
        (
            "unknown model key",
            |s| write(s, "groups/rack7/model.toml", "[sysctl]\n\"a.b\" = \"1\"\n[service]\nenable = []\n"),
            "groups/rack7/model.toml:3:",
        ),
        (
            "uid clash",
            |s| write(s, "groups/rack7/model.toml", "[[users]]\nname = \"bob\"\nuid = 2001\nlocked = true\n"),
            "groups/rack7/model.toml:2: node n1: user bob (uid 2001, group:rack7) clashes with user alice",
        ),
        (
            "plugin escapes its root",
            |s| write(s, "plugins/acme-agent/files/etc/evil", "x\n"),
            "plugins/acme-agent/files/etc/evil:1: plugin acme-agent: /etc/evil is outside its root /opt/acme/acme-agent",
        ),
        (
            "plugin sets the hostname",
            |s| write(s, "plugins/acme-agent/model.toml", "hostname = \"x\"\n"),
            "plugins/acme-agent/model.toml:1: plugin acme-agent",
        ),
        (
            "group cycle",
            |s| {
                write(
                    s,
                    "site.toml",
                    &SITE_TOML.replace(
                        "vars = { role = \"compute\" }",
                        "vars = { role = \"compute\" }\ngroups = [\"rack7\"]",
                    ),
                )
            },
            "site.toml:9: group cycle: ",
        ),
        (
            "unknown group",
            |s| write(s, "site.toml", &SITE_TOML.replace("groups = [\"rack8\"]", "groups = [\"rack9\"]")),
            "site.toml:22: node n2: unknown group \"rack9\"",
        ),
        (
            "unknown plugin",
            |s| write(s, "site.toml", &SITE_TOML.replace("[\"acme-agent\"]", "[\"nope\"]")),
            "site.toml:5: defaults: unknown plugin \"nope\"",
        ),
        (
            "site.toml syntax",
            |s| write(s, "site.toml", &format!("{SITE_TOML}\n[nodes.n3\n")),
            "site.toml:24: unclosed table",
        ),
        (
            "site.toml unknown key",
            |s| write(s, "site.toml", &format!("{SITE_TOML}colour = 1\n")),
            "site.toml:23: unknown field `colour`",
        ),
        (
            "undeclared group dir",
            |s| write(s, "groups/rack9/files/x", "x"),
            "groups/rack9:1: no [groups.rack9] in site.toml",
        ),
        (
            "symlink escapes the root",
            |s| std::os::unix::fs::symlink("../../etc/shadow", s.join("groups/rack7/files/etc/link")).unwrap(),
            "groups/rack7/files/etc/link:1: symlink to ../../etc/shadow:",
        ),
        ("unknown site directory", |s| write(s, "group/rack7/files/x", "x"), "group:1: unknown directory"),
        (
            "reserved .stateless",
            |s| write(s, "default/files/.stateless/model.toml", "x"),
            "default/files/.stateless:1: files/.stateless is reserved",
        ),
        (
            "files.toml bad mode",
            |s| write(s, "nodes/n1/files.toml", "[\"etc/secret\"]\nmode = \"rw\"\n"),
            "nodes/n1/files.toml:1: etc/secret: mode",
        ),
        (
            "reserved variable",
            |s| write(s, "site.toml", &SITE_TOML.replace("domain =", "node =")),
            "site.toml:1: variable \"node\" is reserved",
        ),
    ];
    for (what, mutate, want) in cases {
        let d = site();
        mutate(&d.path().join("site"));
        let o = ctl(&["site", "check", "site"], d.path());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(err.lines().any(|l| l.starts_with(want)), "{what}: want {want:?} in:\n{err}");
        // Each problem is one line; the last says how many.
        assert!(err.lines().last().unwrap().contains("problem(s)"), "{what}: {err}");
        // A build refuses the same tree and publishes nothing.
        let o = ctl(&["site", "build", "site", "--no-encrypt", "--data", "data"], d.path());
        assert_eq!(o.status.code(), Some(1), "{what}");
        assert!(!d.path().join("data").exists(), "{what}");
    }
}

#[test]
fn build_is_reproducible_incremental_and_per_node() {
    let d = site();
    let p = d.path();
    // --dry-run and diff write nothing.
    let plan = build(p, &["--dry-run"]);
    assert!(plan.contains("5 of 5 layers would publish") || plan.contains("of 6 layers would publish"), "{plan}");
    let diff = ok(&["site", "diff", "site", "--data", "data"], p);
    assert!(diff.contains("node n1:") && diff.contains("+ etc/secret"), "{diff}");
    assert!(!p.join("data").exists());

    let first = build(p, &[]);
    assert!(first.contains("published generation 1"), "{first}");
    for rel in ["v1/default/bundle", "v1/plugins/acme-agent/bundle", "v1/groups/rack7/bundle", "v1/nodes/n1/bundle"] {
        assert_eq!(generation(p, rel), 1, "{rel}");
    }
    // No change: no new generation, same content digest.
    let before = snapshot(&p.join("data/v1"));
    let again = build(p, &[]);
    assert!(again.contains("0 of "), "{again}");
    assert_eq!(snapshot(&p.join("data/v1")), before);
    let digest = |out: &str, layer: &str| {
        out.lines().find(|l| l.starts_with(layer)).unwrap().rsplit("content ").next().unwrap().to_owned()
    };
    assert_eq!(digest(&first, "group rack7"), digest(&again, "group rack7"));
    assert!(ok(&["site", "diff", "site", "--data", "data"], p).lines().all(|l| l.ends_with("no change")));

    // One group's file changes: only that group's layer is republished.
    write(&p.join("site"), "groups/rack8/files/etc/rack", "rack8, row 2\n");
    let data_before = snapshot(&p.join("data"));
    let plan = build(p, &["--dry-run"]);
    assert!(plan.contains("group rack8: changed: would publish generation 2"), "{plan}");
    assert_eq!(snapshot(&p.join("data")), data_before, "--dry-run wrote");
    let diff = ok(&["site", "diff", "site", "--data", "data"], p);
    assert!(diff.contains("node n2:\n  group rack8: changed\n    ~ etc/rack\n"), "{diff}");
    assert!(diff.contains("node n1: no change"), "{diff}");
    assert_eq!(snapshot(&p.join("data")), data_before, "diff wrote");
    let inc = build(p, &[]);
    assert!(inc.contains("1 of "), "{inc}");
    assert_eq!(generation(p, "v1/groups/rack8/bundle"), 2);
    assert_eq!(generation(p, "v1/groups/rack7/bundle"), 1);
    assert_eq!(generation(p, "v1/nodes/n2/bundle"), 1);
    assert_eq!(generation(p, "v1/default/bundle"), 1);

    // A per-node template lands in each node's bundle only; shared
    // output in the shared layer; scopes and keys per layer.
    let h = open(p, "v1/nodes/n1/bundle", &["--node", "n1"], "n1");
    assert!(h.contains("node:n1"), "{h}");
    assert_eq!(fs::read_to_string(p.join("n1/etc/whoami")).unwrap(), "I am n1 in compute,rack7\n");
    assert_eq!(fs::read_to_string(p.join("n1/etc/ntp.conf")).unwrap(), "server 10.0.7.1\n");
    assert!(!p.join("n1/etc/motd").exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(p.join("n1/etc/secret")).unwrap().permissions().mode() & 0o7777, 0o600);
    let layer = fs::read_to_string(p.join("n1/.stateless/layer.toml")).unwrap();
    assert!(
        layer.contains("groups = [\"compute\", \"rack7\"]") && layer.contains("plugins = [\"acme-agent\"]"),
        "{layer}"
    );
    let model = fs::read_to_string(p.join("n1/.stateless/model.toml")).unwrap();
    assert!(model.contains("n1.example.org"), "{model}");
    let h = open(p, "v1/default/bundle", &["--default"], "def");
    assert!(h.contains("scope:           any"), "{h}");
    assert_eq!(fs::read_to_string(p.join("def/etc/motd")).unwrap(), "welcome to example.org\n");
    assert!(!p.join("def/etc/whoami").exists());
    let h = open(p, "v1/groups/rack7/bundle", &["--group", "rack7"], "g7");
    assert!(h.contains("group:rack7"), "{h}");
    assert!(!p.join("g7/etc/ntp.conf").exists(), "a group-variable template is per node");
    assert_eq!(fs::read_to_string(p.join("g7/etc/rack")).unwrap(), "rack7\n");
    let h = open(p, "v1/plugins/acme-agent/bundle", &["--default"], "pl");
    assert!(h.contains("plugin:acme-agent"), "{h}");
    let layer = fs::read_to_string(p.join("pl/.stateless/layer.toml")).unwrap();
    assert!(layer.contains("vendor = \"acme\"") && layer.contains("version = \"1.2.3\""), "{layer}");
    // diff names model entries too, and files a change removes.
    write(
        &p.join("site"),
        "groups/rack7/model.toml",
        "[sysctl]\n\"net.ipv4.ip_forward\" = \"0\"\n\"vm.swappiness\" = \"5\"\n",
    );
    fs::remove_file(p.join("site/groups/rack7/files/etc/rack")).unwrap();
    let diff = ok(&["site", "diff", "site", "--data", "data"], p);
    for want in [
        "  group rack7: changed\n",
        "    - etc/rack\n",
        "    ~ .stateless/model.toml\n",
        "    ~ model sysctl.net.ipv4.ip_forward\n",
        "    + model sysctl.vm.swappiness\n",
    ] {
        assert!(diff.contains(want), "{want:?} in {diff}");
    }
    assert!(diff.contains("node n2: no change"), "{diff}");

    // A node's key does not open another node's layer.
    let o = ctl(&["bundle", "open", "data/v1/nodes/n2/bundle", "--key", "n1.key", "-o", "x"], p);
    assert!(!o.status.success());
}

#[test]
fn the_same_tree_packs_to_the_same_payload() {
    let d = site();
    let p = d.path();
    let a = ok(&["site", "build", "site", "--no-encrypt", "--data", "data-a"], p);
    let b = ok(&["site", "build", "site", "--no-encrypt", "--data", "data-b"], p);
    assert_eq!(a, b);
    for rel in ["v1/default/bundle", "v1/nodes/n1/bundle", "v1/plugins/acme-agent/bundle"] {
        // Unencrypted: only the header's random salt and creation time may
        // differ; the payload bytes are the same.
        let x = fs::read(p.join("data-a").join(rel)).unwrap();
        let y = fs::read(p.join("data-b").join(rel)).unwrap();
        assert_eq!(x[320..], y[320..], "{rel}");
    }
}

#[test]
fn model_show_and_plugins_read_what_apply_left() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    fs::create_dir_all(&root).unwrap();
    let base = stateless_model::Model::load(
        "default/model.toml",
        "default",
        "[sysctl]\n\"vm.swappiness\" = \"10\"\n[firewall]\nallow = [\"tcp/22\"]\n",
    )
    .unwrap();
    let node = stateless_model::Model::load("nodes/n1/model.toml", "node:n1", "hostname = \"n1\"\n").unwrap();
    let mut m = stateless_model::Model::merge([base, node]);
    let meta = stateless_model::layer::LayerMeta::parse(
        "layer.toml",
        "kind = \"plugin\"\nname = \"acme-agent\"\nvendor = \"acme\"\nversion = \"1.2.3\"\n",
    )
    .unwrap();
    m.add_plugin_layer("plugin:acme-agent", &meta, 7);
    stateless_model::apply(&m, &root).unwrap();

    let out = ok(&["model", "show", "--root", "root"], d.path());
    let line =
        |key: &str| out.lines().find(|l| l.split_whitespace().nth(1) == Some(key)).unwrap_or_default().to_owned();
    assert!(line("hostname").ends_with("node:n1"), "{out}");
    assert!(line("vm.swappiness").contains("10") && line("vm.swappiness").ends_with("default"), "{out}");
    assert!(line("tcp/22").ends_with("default"), "{out}");
    assert!(line("acme-agent").ends_with("plugin:acme-agent"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["model", "show", "--root", "root", "--json"], d.path())).unwrap();
    assert!(json["entries"].as_array().unwrap().iter().any(|e| e["part"] == "sysctl" && e["layer"] == "default"));

    let out = ok(&["plugins", "--root", "root"], d.path());
    let row = out.lines().nth(1).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols, ["acme-agent", "acme", "1.2.3", "7", "installed"], "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["plugins", "--root", "root", "--json"], d.path())).unwrap();
    assert_eq!(json["plugins"][0]["generation"], 7);

    // A root the model never touched: one line saying so, exit 1.
    let o = ctl(&["model", "show", "--root", "."], &root.join("etc"));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
}

#[test]
fn publish_takes_a_plugin_target() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write(p, "tree/opt/acme/agent/x", "x\n");
    ok(
        &["bundle", "pack", "tree", "-o", "p.bundle", "--unencrypted", "--generation", "3", "--scope", "plugin:agent"],
        p,
    );
    let out = ok(&["publish", "--data", "data", "--plugin", "agent", "p.bundle"], p);
    assert!(out.contains("as the plugin agent bundle"), "{out}");
    assert!(p.join("data/v1/plugins/agent/bundle").is_file());
    // Only its own scope is accepted there.
    let o = ctl(&["publish", "--data", "data", "--plugin", "other", "p.bundle"], p);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn a_bundle_published_by_hand_or_a_new_key_gets_a_new_generation() {
    let d = site();
    let p = d.path();
    build(p, &[]);
    write(p, "tree/etc/x", "by hand\n");
    ok(
        &["bundle", "pack", "tree", "-o", "g.bundle", "--unencrypted", "--generation", "10", "--scope", "group:rack7"],
        p,
    );
    ok(&["publish", "--data", "data", "--group", "rack7", "g.bundle"], p);
    let diff = ok(&["site", "diff", "site", "--data", "data"], p);
    assert!(diff.contains("group rack7: changed"), "{diff}");
    let out = build(p, &[]);
    assert!(out.contains("group rack7: changed: published generation 11"), "{out}");
    assert!(out.contains("1 of "), "{out}");
    // A new site key changes every encrypted layer's key: all republished.
    fs::remove_file(p.join("keys/site.key")).unwrap();
    ok(&["key", "new", "-o", "keys/site.key"], p);
    let out = build(p, &[]);
    assert!(!out.contains("unchanged"), "{out}");
    assert_eq!(generation(p, "v1/groups/rack7/bundle"), 12);
    assert_eq!(generation(p, "v1/nodes/n1/bundle"), 2);
}

/// The data directory a build fills is what `statelessctl serve` serves:
/// every layer at its protocol path, the build records never.
#[test]
fn a_built_site_is_served_layer_by_layer() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;
    let d = site();
    let p = d.path();
    build(p, &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_statelessctl"))
        .args(["serve", "--data", "data", "--listen", "127.0.0.1:0"])
        .current_dir(p)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
    let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        (String::from_utf8_lossy(&resp[..end]).into_owned(), resp[end..].to_vec())
    };
    for (path, file) in [
        ("/v1/default/bundle", "data/v1/default/bundle"),
        ("/v1/plugins/acme-agent/bundle", "data/v1/plugins/acme-agent/bundle"),
        ("/v1/groups/rack7/bundle", "data/v1/groups/rack7/bundle"),
        ("/v1/groups/rack8/bundle", "data/v1/groups/rack8/bundle"),
        ("/v1/nodes/n1/bundle", "data/v1/nodes/n1/bundle"),
        ("/v1/nodes/n2/bundle", "data/v1/nodes/n2/bundle"),
    ] {
        let (head, body) = get(path);
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert_eq!(body, fs::read(p.join(file)).unwrap(), "{path}");
    }
    let (head, _) = get("/state/site/nodes/n1.json");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let _ = child.kill();
    let _ = child.wait();
    assert!(p.join("data/state/site/nodes/n1.json").is_file());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(p.join("data/state")).unwrap().permissions().mode() & 0o777, 0o700);
}

/// A node (and a group only it used) removed from site.toml: the build says
/// so and leaves them published; `--prune` withdraws them into the history
/// (node first), and a node added back continues its generations.
#[test]
fn layers_removed_from_the_site_are_withdrawn_with_prune() {
    let d = site();
    let p = d.path();
    build(p, &[]);
    assert_eq!(generation(p, "v1/nodes/n2/bundle"), 1);
    // n2 and its group rack8 leave the site.
    let without = SITE_TOML
        .replace("[groups.rack8]\nvars = { ntp = \"10.0.8.1\" }\n", "")
        .replace("[nodes.n2]\ngroups = [\"rack8\"]\n", "");
    assert!(!without.contains("n2") && !without.contains("rack8"), "{without}");
    write(p, "site/site.toml", &without);
    fs::remove_dir_all(p.join("site/groups/rack8")).unwrap();

    let out = build(p, &[]);
    assert!(
        out.contains("node n2: no longer in the site: still published (withdraw it with --prune): generation 1"),
        "{out}"
    );
    assert!(out.contains("group rack8: no longer in the site: still published"), "{out}");
    assert!(out.contains("2 layers no longer in the site and still published"), "{out}");
    assert!(p.join("data/v1/nodes/n2/bundle").is_file());

    let before = snapshot(&p.join("data"));
    let out = build(p, &["--prune", "--dry-run"]);
    assert!(out.contains("node n2: no longer in the site: would withdraw generation 1"), "{out}");
    assert_eq!(snapshot(&p.join("data")), before, "a dry run writes nothing");

    let out = build(p, &["--prune"]);
    assert!(out.contains("node n2: no longer in the site: withdrew generation 1"), "{out}");
    assert!(out.contains("group rack8: no longer in the site: withdrew generation 1"), "{out}");
    assert!(out.contains("2 layers withdrawn"), "{out}");
    for rel in ["v1/nodes/n2/bundle", "v1/groups/rack8/bundle"] {
        assert!(!p.join("data").join(rel).exists(), "{rel} still published");
    }
    assert!(p.join("data/state/history/nodes/n2/00000000000000000001.bundle").is_file());
    assert!(p.join("data/v1/nodes/n1/bundle").is_file(), "the others stay");
    let audit = fs::read_to_string(p.join("data/state/audit.log")).unwrap();
    let withdrawals: Vec<&str> = audit.lines().filter(|l| l.contains("\"withdraw\"")).collect();
    assert_eq!(withdrawals.len(), 2, "{audit}");
    assert!(
        withdrawals[0].contains("v1/nodes/n2/bundle") && withdrawals[1].contains("v1/groups/rack8/bundle"),
        "{audit}"
    );

    // Nothing left to withdraw; n2 added back gets generation 2.
    let out = build(p, &["--prune"]);
    assert!(!out.contains("no longer"), "{out}");
    write(p, "site/site.toml", &format!("{without}\n[nodes.n2]\n"));
    let out = build(p, &[]);
    assert!(out.contains("node n2: changed: published generation 2"), "{out}");
    assert_eq!(generation(p, "v1/nodes/n2/bundle"), 2);
}
