//! The loader applying a stack of layers (issue 14): default, plugins,
//! groups, node, each verified before any is applied, against nginx
//! serving the protocol's layout on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod support;

use stateless_bundle::Scope;
use support::{Nginx, Node, Site};

const NODE: &str = "rd.stateless.node=node42";

fn cmd(site: &Site, port: u16, extra: &str) -> String {
    format!(
        "rd.stateless.server=http://127.0.0.1:{port} {NODE} rd.stateless.key=file:{} rd.stateless.timeout=5 {extra}",
        site.key_file.display()
    )
}

fn meta(kind: &str, name: Option<&str>, groups: &[&str], plugins: &[&str]) -> Vec<u8> {
    let list = |l: &[&str]| l.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    let mut t = format!("kind = \"{kind}\"\n");
    if let Some(n) = name {
        t.push_str(&format!("name = {n:?}\n"));
    }
    if !groups.is_empty() {
        t.push_str(&format!("groups = [{}]\n", list(groups)));
    }
    if !plugins.is_empty() {
        t.push_str(&format!("plugins = [{}]\n", list(plugins)));
    }
    if kind == "plugin" {
        t.push_str("vendor = \"acme\"\nversion = \"1.2.3\"\n");
    }
    t.into_bytes()
}

/// Publishes a layer: `files` plus its `.stateless/layer.toml` (and
/// `model.toml` when given).
#[allow(clippy::too_many_arguments)]
fn layer(
    site: &Site,
    rel: &str,
    generation: u64,
    scope: Scope,
    layer_toml: &[u8],
    model: Option<&str>,
    files: &[(&str, &[u8])],
    deletions: &[&str],
) -> Vec<u8> {
    let mut all: Vec<(&str, &[u8])> = files.to_vec();
    all.push((".stateless/layer.toml", layer_toml));
    if let Some(m) = model {
        all.push((".stateless/model.toml", m.as_bytes()));
    }
    let bytes = site.make_with(generation, scope, &all, deletions, true);
    site.put(rel, &bytes);
    bytes
}

fn digest(bytes: &[u8]) -> String {
    stateless_bundle::BundleReader::new(bytes).unwrap().raw_header().digest_hex()
}

/// default (gen 1), group rack7 (gen 2), node node42 (gen 3): each
/// overrides or deletes what the one before laid down.
fn three_layers(site: &Site, node_gen: u64, node_motd: &[u8]) {
    layer(
        site,
        "v1/default/bundle",
        1,
        Scope::Any,
        &meta("default", None, &[], &[]),
        None,
        &[
            ("etc/motd", b"default\n"),
            ("etc/a", b"default a\n"),
            ("etc/b", b"default b\n"),
            ("etc/only-default", b"d\n"),
            ("etc/drop-by-group", b"x\n"),
        ],
        &[],
    );
    layer(
        site,
        "v1/groups/rack7/bundle",
        2,
        Scope::Group("rack7".into()),
        &meta("group", Some("rack7"), &[], &[]),
        None,
        &[("etc/motd", b"rack7\n"), ("etc/a", b"rack7 a\n"), ("etc/g", b"group\n")],
        &["etc/drop-by-group", "etc/base"],
    );
    layer(
        site,
        "v1/nodes/node42/bundle",
        node_gen,
        Scope::Node("node42".into()),
        &meta("node", Some("node42"), &["rack7"], &[]),
        None,
        &[("etc/motd", node_motd), ("etc/n", b"node\n")],
        &["etc/b"],
    );
}

fn layer_list(status: &serde_json::Value) -> Vec<(String, u64, String)> {
    status["layers"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .map(|l| {
            (
                l["target"].as_str().unwrap().to_owned(),
                l["generation"].as_u64().unwrap(),
                l["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn layers_of(status: &serde_json::Value) -> Vec<String> {
    layer_list(status).into_iter().map(|(t, g, s)| format!("{t}@{g}/{s}")).collect()
}

#[test]
fn a_three_layer_stack_overrides_and_deletes_across_layers() {
    let site = Site::new();
    three_layers(&site, 3, b"node42\n");
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let (code, err, status) = node.boot(&cmd(&site, nginx.port, ""));
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("node42\n"));
    assert_eq!(node.read("etc/a").as_deref(), Some("rack7 a\n"));
    assert_eq!(node.read("etc/b"), None, "the node layer deletes the default's file");
    assert_eq!(node.read("etc/drop-by-group"), None);
    assert_eq!(node.read("etc/base"), None, "the group layer deletes a base image file");
    assert_eq!(node.read("etc/only-default").as_deref(), Some("d\n"));
    assert_eq!(node.read("etc/g").as_deref(), Some("group\n"));
    assert_eq!(node.read("etc/n").as_deref(), Some("node\n"));
    assert!(!node.sysroot().join(".stateless").exists(), ".stateless/ is never written into the root");
    assert_eq!(node.staging_dirs(), Vec::<String>::new());
    assert_eq!(layers_of(&status), ["default@1/server", "group:rack7@2/server", "node:node42@3/server"]);
    for l in status["layers"].as_array().unwrap() {
        assert_eq!(l["digest"].as_str().unwrap().len(), 64, "{status}");
        assert!(l["from"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{status}");
        assert_eq!(l["source"], "server", "a fetched layer's source is the word, its URL is from: {status}");
    }
    assert_eq!(status["source"], "server");
    assert!(err.contains("applied a stack of 3 layers (default 1, group rack7 2, node node42 3)"), "{err}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.dir.path().join("cache/current.stack.json")).unwrap()).unwrap();
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 3, "{manifest}");
    let blobs = std::fs::read_dir(node.dir.path().join("cache/blobs")).unwrap().count();
    assert_eq!(blobs, 3);
    // Nothing of the downloads is left in the run directory.
    let leftovers: Vec<_> = std::fs::read_dir(node.dir.path().join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bundle"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_refused_middle_layer_fails_the_stack_and_applies_nothing() {
    let site = Site::new();
    three_layers(&site, 3, b"node42\n");
    // Tampered: one payload byte flipped.
    let path = site.www().join("v1/groups/rack7/bundle");
    let mut b = std::fs::read(&path).unwrap();
    let n = b.len();
    b[n - 20] ^= 1;
    std::fs::write(&path, &b).unwrap();
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let before = node.tree_digest();
    let (code, err, status) = node.boot(&cmd(&site, nginx.port, ""));
    assert_ne!(code, 0, "{err}");
    assert_eq!(node.tree_digest(), before, "nothing applied");
    assert_eq!(node.staging_dirs(), Vec::<String>::new());
    let msg = status["message"].as_str().unwrap();
    assert!(msg.contains("layer group rack7: "), "{msg}");
    assert!(err.contains("layer group rack7: "), "{err}");
    let refused: Vec<_> = status["outcomes"].as_array().unwrap().iter().filter(|o| o["result"] == "refused").collect();
    assert_eq!(refused.len(), 1, "{status}");
    assert!(refused[0]["from"].as_str().unwrap().ends_with("/v1/groups/rack7/bundle"), "{status}");
    assert_eq!(refused[0]["kind"], "authentication", "{status}");

    // A layer sealed for another group, served as rack7: scope.
    layer(
        &site,
        "v1/groups/rack7/bundle",
        2,
        Scope::Group("rack9".into()),
        &meta("group", Some("rack7"), &[], &[]),
        None,
        &[("etc/motd", b"rack7\n")],
        &[],
    );
    let (code, _, status) = node.boot(&cmd(&site, nginx.port, ""));
    assert_ne!(code, 0);
    assert_eq!(node.tree_digest(), before);
    assert!(status["message"].as_str().unwrap().contains("layer group rack7: bundle is for group:rack9"), "{status}");

    // A layer.toml that says it is another layer.
    layer(
        &site,
        "v1/groups/rack7/bundle",
        2,
        Scope::Group("rack7".into()),
        &meta("group", Some("rack9"), &[], &[]),
        None,
        &[("etc/motd", b"rack7\n")],
        &[],
    );
    let (code, _, status) = node.boot(&cmd(&site, nginx.port, ""));
    assert_ne!(code, 0);
    assert_eq!(node.tree_digest(), before);
    let msg = status["message"].as_str().unwrap();
    assert!(msg.contains("layer group rack7: .stateless/layer.toml says this is the layer of group rack9"), "{msg}");

    // A model.toml that does not parse.
    layer(
        &site,
        "v1/groups/rack7/bundle",
        2,
        Scope::Group("rack7".into()),
        &meta("group", Some("rack7"), &[], &[]),
        Some("no_such_key = 1\n"),
        &[("etc/motd", b"rack7\n")],
        &[],
    );
    let (code, _, status) = node.boot(&cmd(&site, nginx.port, ""));
    assert_ne!(code, 0);
    assert_eq!(node.tree_digest(), before);
    let msg = status["message"].as_str().unwrap();
    assert!(msg.contains("layer group rack7: .stateless/model.toml:1"), "{msg}");
}

#[test]
fn a_304_on_one_layer_takes_that_layer_from_the_cache() {
    let site = Site::new();
    three_layers(&site, 3, b"node42\n");
    let group = std::fs::read(site.www().join("v1/groups/rack7/bundle")).unwrap();
    let d = digest(&group);
    let nginx = Nginx::start(&site.www(), None, &format!("if ($http_if_none_match = '\"{d}\"') {{ return 304; }}"));
    let node = Node::new();
    let (code, err, _) = node.boot(&cmd(&site, nginx.port, ""));
    assert_eq!(code, 0, "{err}");
    node.fresh_sysroot();
    let (code, err, status) = node.boot(&cmd(&site, nginx.port, ""));
    assert_eq!(code, 0, "{err}");
    assert_eq!(layers_of(&status), ["default@1/server", "group:rack7@2/cache-current", "node:node42@3/server"]);
    assert!(status["attempts"].to_string().contains("groups/rack7/bundle: 304"), "{status}");
    assert_eq!(node.read("etc/a").as_deref(), Some("rack7 a\n"));
    assert_eq!(node.read("etc/motd").as_deref(), Some("node42\n"));
    // The blob is kept: still three, one per layer.
    assert_eq!(std::fs::read_dir(node.dir.path().join("cache/blobs")).unwrap().count(), 3);
}

#[test]
fn offline_boots_apply_a_cached_stack_as_a_unit() {
    let site = Site::new();
    three_layers(&site, 3, b"node gen3\n");
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    assert_eq!(node.boot(&cmd(&site, nginx.port, "")).0, 0);
    // Only the node layer changes (a republished layer of the same
    // generation with other bytes would be a replay).
    layer(
        &site,
        "v1/nodes/node42/bundle",
        4,
        Scope::Node("node42".into()),
        &meta("node", Some("node42"), &["rack7"], &[]),
        None,
        &[("etc/motd", b"node gen4\n"), ("etc/n", b"node\n")],
        &["etc/b"],
    );
    let (code, err, _) = node.boot(&cmd(&site, nginx.port, ""));
    assert_eq!(code, 0, "{err}");
    let port = nginx.port;
    drop(nginx);

    node.fresh_sysroot();
    let (code, err, status) = node.boot(&cmd(&site, port, ""));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-current", "{status}");
    assert_eq!(
        layers_of(&status),
        ["default@1/cache-current", "group:rack7@2/cache-current", "node:node42@4/cache-current"]
    );
    assert_eq!(node.read("etc/motd").as_deref(), Some("node gen4\n"));
    assert_eq!(node.read("etc/a").as_deref(), Some("rack7 a\n"));
    assert!(err.contains("applied the cached stack (default 1, group rack7 2, node node42 4"), "{err}");

    // The current stack's node blob is corrupt: the whole previous stack
    // applies, never the current stack's other layers with the old node.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.dir.path().join("cache/current.stack.json")).unwrap()).unwrap();
    let node_digest = manifest["layers"][2]["digest"].as_str().unwrap().to_owned();
    let blob = node.dir.path().join(format!("cache/blobs/{node_digest}.bundle"));
    let mut b = std::fs::read(&blob).unwrap();
    let n = b.len();
    b[n - 10] ^= 1;
    std::fs::write(&blob, b).unwrap();
    node.fresh_sysroot();
    let (code, err, status) = node.boot(&cmd(&site, port, ""));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-previous", "{status}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("node gen3\n"));
    assert_eq!(
        layers_of(&status),
        ["default@1/cache-previous", "group:rack7@2/cache-previous", "node:node42@3/cache-previous"]
    );
}

#[test]
fn rollback_is_refused_per_layer() {
    let site = Site::new();
    three_layers(&site, 3, b"node42\n");
    // The group at generation 5.
    layer(
        &site,
        "v1/groups/rack7/bundle",
        5,
        Scope::Group("rack7".into()),
        &meta("group", Some("rack7"), &[], &[]),
        None,
        &[("etc/motd", b"rack7 gen5\n")],
        &[],
    );
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let (code, err, _) = node.boot(&cmd(&site, nginx.port, ""));
    assert_eq!(code, 0, "{err}");
    // The group goes back to 4: refused, though the node (3) and default
    // (1) are lower; the cached stack applies.
    layer(
        &site,
        "v1/groups/rack7/bundle",
        4,
        Scope::Group("rack7".into()),
        &meta("group", Some("rack7"), &[], &[]),
        None,
        &[("etc/motd", b"rack7 gen4\n"), ("etc/old", b"old\n")],
        &[],
    );
    node.fresh_sysroot();
    let (code, err, status) = node.boot(&cmd(&site, nginx.port, ""));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("layer group rack7: rollback refused: bundle generation 4 is older than generation 5"),
        "{err}"
    );
    assert_eq!(status["source"], "cache-current");
    assert_eq!(node.read("etc/old"), None);
    let refused: Vec<_> = status["outcomes"].as_array().unwrap().iter().filter(|o| o["result"] == "refused").collect();
    assert_eq!(refused[0]["kind"], "rollback", "{status}");
}

#[test]
fn groups_come_from_the_node_layer_before_the_command_line() {
    let site = Site::new();
    three_layers(&site, 3, b"node42\n");
    layer(
        &site,
        "v1/groups/gpu/bundle",
        1,
        Scope::Group("gpu".into()),
        &meta("group", Some("gpu"), &[], &[]),
        None,
        &[("etc/motd", b"gpu\n"), ("etc/gpu", b"gpu\n"), ("etc/a", b"gpu a\n")],
        &[],
    );
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let (code, err, status) = node.boot(&cmd(&site, nginx.port, "rd.stateless.group=gpu"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/gpu"), None, "the node layer names rack7 only");
    assert_eq!(node.read("etc/a").as_deref(), Some("rack7 a\n"));
    let warnings = status["warnings"].to_string();
    assert!(
        warnings.contains("rd.stateless.group=gpu differs from the groups in the node's own layer (rack7)"),
        "{warnings}"
    );

    // Without a node layer, the command line's groups, in order: the
    // later group wins.
    std::fs::remove_file(site.www().join("v1/nodes/node42/bundle")).unwrap();
    node.fresh_sysroot();
    let (code, err, status) = node.boot(&cmd(&site, nginx.port, "rd.stateless.group=rack7,gpu"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(layers_of(&status), ["default@1/server", "group:rack7@2/server", "group:gpu@1/server"]);
    assert_eq!(node.read("etc/a").as_deref(), Some("gpu a\n"));
    assert_eq!(node.read("etc/motd").as_deref(), Some("gpu\n"));
    assert!(status["warnings"].as_array().unwrap().is_empty(), "{status}");
    // A group with no layer (404) is normal.
    node.fresh_sysroot();
    let (code, err, status) = node.boot(&cmd(&site, nginx.port, "rd.stateless.group=none-such,rack7"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(layers_of(&status), ["default@1/server", "group:rack7@2/server"]);
}

fn plugin_site(site: &Site, plugin_files: &[(&str, &[u8])]) {
    layer(
        site,
        "v1/default/bundle",
        1,
        Scope::Any,
        &meta("default", None, &[], &["acme-agent"]),
        None,
        &[("etc/motd", b"default\n")],
        &[],
    );
    layer(
        site,
        "v1/nodes/node42/bundle",
        1,
        Scope::Node("node42".into()),
        &meta("node", Some("node42"), &[], &[]),
        None,
        &[("etc/n", b"node\n")],
        &[],
    );
    layer(
        site,
        "v1/plugins/acme-agent/bundle",
        7,
        Scope::Plugin("acme-agent".into()),
        &meta("plugin", Some("acme-agent"), &[], &[]),
        Some("[sysctl]\n\"vm.swappiness\" = \"10\"\n"),
        plugin_files,
        &[],
    );
}

#[test]
fn a_plugin_layer_is_applied_and_registered() {
    let site = Site::new();
    plugin_site(&site, &[("opt/acme/acme-agent/bin/agent", b"#!/bin/sh\n")]);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let (code, err, status) = node.boot(&cmd(&site, nginx.port, ""));
    assert_eq!(code, 0, "{err}");
    assert_eq!(layers_of(&status), ["default@1/server", "plugin:acme-agent@7/server", "node:node42@1/server"]);
    assert_eq!(node.read("opt/acme/acme-agent/bin/agent").as_deref(), Some("#!/bin/sh\n"));
    let registry: serde_json::Value = serde_json::from_str(&node.read("etc/stateless/plugins.json").unwrap()).unwrap();
    let text = registry.to_string();
    for want in ["acme-agent", "acme", "1.2.3"] {
        assert!(text.contains(want), "{text}");
    }
    assert!(text.contains('7'), "the layer generation: {text}");
    assert!(node.read("etc/sysctl.d/90-stateless.conf").unwrap().contains("vm.swappiness"));
}

#[test]
fn a_plugin_escaping_its_root_or_its_scope_is_refused() {
    let site = Site::new();
    plugin_site(&site, &[("opt/acme/acme-agent/bin/agent", b"x\n"), ("etc/evil", b"x\n")]);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let before = node.tree_digest();
    let (code, _, status) = node.boot(&cmd(&site, nginx.port, ""));
    assert_ne!(code, 0);
    assert_eq!(node.tree_digest(), before);
    let msg = status["message"].as_str().unwrap();
    assert!(msg.contains("layer plugin acme-agent: plugin acme-agent: /etc"), "{msg}");
    assert!(msg.contains(" is outside its root /opt/acme/acme-agent"), "{msg}");
    let kinds: Vec<_> = status["outcomes"].as_array().unwrap().iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds, ["plugin"], "{status}");

    // Another vendor's directory.
    plugin_site(&site, &[("opt/other/acme-agent/x", b"x\n")]);
    let (code, _, status) = node.boot(&cmd(&site, nginx.port, ""));
    assert_ne!(code, 0);
    assert!(status["message"].as_str().unwrap().contains("/opt/other"), "{status}");

    // A plugin sealed with scope any is not a plugin's layer.
    plugin_site(&site, &[("opt/acme/acme-agent/bin/agent", b"x\n")]);
    layer(
        &site,
        "v1/plugins/acme-agent/bundle",
        7,
        Scope::Any,
        &meta("plugin", Some("acme-agent"), &[], &[]),
        None,
        &[("opt/acme/acme-agent/bin/agent", b"x\n")],
        &[],
    );
    let (code, _, status) = node.boot(&cmd(&site, nginx.port, ""));
    assert_ne!(code, 0);
    assert!(status["message"].as_str().unwrap().contains("layer plugin acme-agent: bundle is for any"), "{status}");
    // And a plugin scope at the node's path.
    plugin_site(&site, &[("opt/acme/acme-agent/bin/agent", b"x\n")]);
    layer(
        &site,
        "v1/nodes/node42/bundle",
        1,
        Scope::Plugin("acme-agent".into()),
        &meta("node", Some("node42"), &[], &[]),
        None,
        &[],
        &[],
    );
    let (code, _, status) = node.boot(&cmd(&site, nginx.port, ""));
    assert_ne!(code, 0);
    assert!(
        status["message"].as_str().unwrap().contains("layer node node42: bundle is for plugin:acme-agent"),
        "{status}"
    );
    assert_eq!(node.tree_digest(), before);
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n";
const GROUP: &str = "root:x:0:\nwheel:x:10:\n";
const SHADOW: &str = "root:!locked::0:99999:7:::\n";
const GSHADOW: &str = "root:::\nwheel:::\n";

fn base_image(node: &Node) {
    let r = node.sysroot();
    for (p, t) in [
        ("etc/passwd", PASSWD),
        ("etc/group", GROUP),
        ("etc/shadow", SHADOW),
        ("etc/gshadow", GSHADOW),
        ("usr/lib/systemd/system/acme.service", "[Install]\nWantedBy=multi-user.target\n"),
    ] {
        let p = r.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, t).unwrap();
    }
}

#[test]
fn the_merged_model_is_applied_after_the_files() {
    let site = Site::new();
    layer(
        &site,
        "v1/default/bundle",
        1,
        Scope::Any,
        &meta("default", None, &[], &[]),
        Some("[sysctl]\n\"net.ipv4.ip_forward\" = \"0\"\n\"kernel.panic\" = \"10\"\n"),
        &[],
        &[],
    );
    layer(
        &site,
        "v1/groups/rack7/bundle",
        1,
        Scope::Group("rack7".into()),
        &meta("group", Some("rack7"), &[], &[]),
        Some("[services]\nenable = [\"acme.service\"]\n"),
        // A unit shipped as a file in a layer, enabled by a later one.
        &[("etc/systemd/system/extra.service", b"[Install]\nWantedBy=multi-user.target\n")],
        &[],
    );
    layer(
        &site,
        "v1/nodes/node42/bundle",
        1,
        Scope::Node("node42".into()),
        &meta("node", Some("node42"), &["rack7"], &[]),
        Some(
            "hostname = \"node42.example.org\"\n[[users]]\nname = \"alice\"\nuid = 2001\nlocked = true\ngroups = [\"wheel\"]\nssh_authorized_keys = [\"ssh-ed25519 AAAAC3Nza alice@example.org\"]\n[services]\nenable = [\"extra.service\"]\n[sysctl]\n\"net.ipv4.ip_forward\" = \"1\"\n",
        ),
        &[],
        &[],
    );
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    base_image(&node);
    let (code, err, _) = node.boot(&cmd(&site, nginx.port, ""));
    assert_eq!(code, 0, "{err}");
    let passwd = node.read("etc/passwd").unwrap();
    assert!(passwd.starts_with(PASSWD) && passwd.contains("alice:x:2001:"), "{passwd}");
    let wants = node.sysroot().join("etc/systemd/system/multi-user.target.wants");
    for unit in ["acme.service", "extra.service"] {
        assert!(wants.join(unit).symlink_metadata().unwrap().file_type().is_symlink(), "{unit}");
    }
    let sysctl = node.read("etc/sysctl.d/90-stateless.conf").unwrap();
    assert!(sysctl.contains("net.ipv4.ip_forward = 1") || sysctl.contains("net.ipv4.ip_forward=1"), "{sysctl}");
    assert!(sysctl.contains("kernel.panic"), "{sysctl}");
    assert!(node.read("home/alice/.ssh/authorized_keys").unwrap().contains("alice@example.org"));
    assert_eq!(node.read("etc/hostname").as_deref().map(str::trim), Some("node42.example.org"));
    assert!(!node.sysroot().join(".stateless").exists());

    // A model the root refuses (a service no layer or image has) fails
    // the boot with a line naming the layer that set it.
    layer(
        &site,
        "v1/nodes/node42/bundle",
        2,
        Scope::Node("node42".into()),
        &meta("node", Some("node42"), &["rack7"], &[]),
        Some("[services]\nenable = [\"nothere.service\"]\n"),
        &[],
        &[],
    );
    node.fresh_sysroot();
    base_image(&node);
    let (code, err, status) = node.boot(&cmd(&site, nginx.port, ""));
    assert_ne!(code, 0, "{err}");
    let msg = status["message"].as_str().unwrap();
    assert!(msg.contains("applying the node model (the entry set by layer node:node42)"), "{msg}");
    assert_eq!(layers_of(&status), ["default@1/server", "group:rack7@1/server", "node:node42@2/server"]);
    assert_eq!(status["result"], "failed");
}

#[test]
fn a_single_bundle_site_works_as_before() {
    let site = Site::new();
    // The node's bundle has no layer.toml: it is applied alone, the
    // default layer is not even asked for.
    site.publish(
        "v1/nodes/node42/bundle",
        3,
        Scope::Node("node42".into()),
        &[("etc/motd", b"single\n"), (".stateless/model.toml", b"hostname = \"x\"\n")],
        true,
    );
    layer(
        &site,
        "v1/default/bundle",
        1,
        Scope::Any,
        &meta("default", None, &[], &[]),
        None,
        &[("etc/from-default", b"d\n")],
        &[],
    );
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let (code, err, status) = node.boot(&cmd(&site, nginx.port, ""));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("applied generation 3 from http://127.0.0.1"), "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("single\n"));
    assert_eq!(node.read("etc/from-default"), None);
    assert!(!node.sysroot().join(".stateless").exists());
    assert_eq!(node.read("etc/hostname"), None, "a single bundle has no model");
    assert_eq!(layers_of(&status), ["node:node42@3/server"]);
    assert!(!status["attempts"].to_string().contains("default/bundle"), "{status}");
    assert!(node.dir.path().join("cache/current.bundle").exists());
    assert!(!node.dir.path().join("cache/current.stack.json").exists());

    // The site moves to layers: the stack applies and is cached; the
    // single bundle's slot stays as the oldest fallback.
    layer(
        &site,
        "v1/nodes/node42/bundle",
        1,
        Scope::Node("node42".into()),
        &meta("node", Some("node42"), &[], &[]),
        None,
        &[("etc/motd", b"layered\n")],
        &[],
    );
    node.fresh_sysroot();
    let (code, err, status) = node.boot(&cmd(&site, nginx.port, ""));
    assert_eq!(code, 0, "{err}");
    assert_eq!(layers_of(&status), ["default@1/server", "node:node42@1/server"]);
    assert_eq!(node.read("etc/motd").as_deref(), Some("layered\n"));
    assert!(node.dir.path().join("cache/current.stack.json").exists());

    // And back to a single bundle: the stack slots are dropped, so an
    // offline boot never goes back to the older stack.
    site.publish("v1/nodes/node42/bundle", 4, Scope::Node("node42".into()), &[("etc/motd", b"single4\n")], true);
    node.fresh_sysroot();
    let (code, err, _) = node.boot(&cmd(&site, nginx.port, ""));
    assert_eq!(code, 0, "{err}");
    assert!(!node.dir.path().join("cache/current.stack.json").exists());
    let port = nginx.port;
    drop(nginx);
    node.fresh_sysroot();
    let (code, err, status) = node.boot(&cmd(&site, port, ""));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-current");
    assert_eq!(node.read("etc/motd").as_deref(), Some("single4\n"));
}

/// A loop device over an image file; detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(img: &std::path::Path) -> Option<Loop> {
        let out = std::process::Command::new("losetup").args(["-f", "--show"]).arg(img).output().ok()?;
        out.status.success().then(|| Loop(String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// An ext4 image labelled `label` holding `tree` (`mkfs.ext4 -d`).
fn media_image(dir: &std::path::Path, label: &str, tree: &std::path::Path) -> Option<Loop> {
    let img = dir.join(format!("{label}.img"));
    std::fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
    let st = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-d"])
        .arg(tree)
        .arg(&img)
        .status()
        .ok()?;
    assert!(st.success());
    Loop::attach(&img)
}

#[test]
fn an_air_gapped_node_boots_its_stack_from_labelled_media() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: loop devices need root");
        return;
    }
    let site = Site::new();
    three_layers(&site, 3, b"from media\n");
    let tmp = tempfile::tempdir().unwrap();
    let label = format!("SLMEDIA{:x}", std::process::id() & 0xffff);
    let Some(lo) = media_image(tmp.path(), &label, &site.www()) else {
        eprintln!("skipped: losetup does not work here");
        return;
    };
    let node = Node::new();
    let cmdline = format!("rd.stateless.server=media:{label} {NODE} rd.stateless.key=file:{}", site.key_file.display());
    let (code, err, status) = node.boot_args(&cmdline, true, &[], &["--usb-device", &lo.0]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("from media\n"));
    assert_eq!(node.read("etc/a").as_deref(), Some("rack7 a\n"));
    assert_eq!(layers_of(&status), ["default@1/media", "group:rack7@2/media", "node:node42@3/media"]);
    assert_eq!(status["source"], "media", "{status}");
    assert!(err.contains(&format!("from media:{label}")), "{err}");
    // The stack is cached like a fetched one, and the media is unmounted.
    assert!(node.dir.path().join("cache/current.stack.json").exists());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&node.dir.path().join("run/media").display().to_string()), "{mountinfo}");

    // A tampered layer on the media is refused like a fetched one.
    let path = site.www().join("v1/groups/rack7/bundle");
    let mut b = std::fs::read(&path).unwrap();
    let n = b.len();
    b[n - 20] ^= 1;
    std::fs::write(&path, &b).unwrap();
    drop(lo);
    let label2 = format!("SLBAD{:x}", std::process::id() & 0xffff);
    let Some(lo) = media_image(tmp.path(), &label2, &site.www()) else { return };
    let node = Node::new();
    let before = node.tree_digest();
    let cmdline =
        format!("rd.stateless.server=media:{label2} {NODE} rd.stateless.key=file:{}", site.key_file.display());
    let (code, _, status) = node.boot_args(&cmdline, true, &[], &["--usb-device", &lo.0]);
    assert_ne!(code, 0);
    assert_eq!(node.tree_digest(), before);
    assert!(status["message"].as_str().unwrap().contains("layer group rack7: "), "{status}");

    // No device with the label: a one-line reason.
    let (code, _, status) = node.boot_args(&cmdline.replace(&label2, "SLNONE"), true, &[], &["--usb-device", &lo.0]);
    assert_ne!(code, 0);
    assert!(status["message"].as_str().unwrap().contains("media SLNONE: no file system with this label"), "{status}");
}

/// The project's reference server (`statelessctl server`), in this process,
/// serving `root` on 127.0.0.1; it answers `If-None-Match` with the
/// bundle digest itself.
fn project_server(root: &std::path::Path) -> u16 {
    let data = stateless_server::DataDir::open(root).unwrap();
    let server =
        stateless_server::Server::bind("127.0.0.1:0".parse().unwrap(), stateless_server::ServerConfig::new(data))
            .unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || server.run());
    port
}

#[test]
fn the_project_server_serves_a_stack_with_304_per_layer() {
    let site = Site::new();
    three_layers(&site, 3, b"node gen3\n");
    let port = project_server(&site.www());
    let node = Node::new();
    let (code, err, status) = node.boot(&cmd(&site, port, ""));
    assert_eq!(code, 0, "{err}");
    assert_eq!(layers_of(&status), ["default@1/server", "group:rack7@2/server", "node:node42@3/server"]);
    assert_eq!(node.read("etc/motd").as_deref(), Some("node gen3\n"));
    assert_eq!(node.read("etc/b"), None);

    // Only the node layer changes: the default and the group are answered
    // 304 and come from the cache, verified again.
    layer(
        &site,
        "v1/nodes/node42/bundle",
        4,
        Scope::Node("node42".into()),
        &meta("node", Some("node42"), &["rack7"], &[]),
        None,
        &[("etc/motd", b"node gen4\n")],
        &["etc/b"],
    );
    node.fresh_sysroot();
    let (code, err, status) = node.boot(&cmd(&site, port, ""));
    assert_eq!(code, 0, "{err}");
    assert_eq!(layers_of(&status), ["default@1/cache-current", "group:rack7@2/cache-current", "node:node42@4/server"]);
    assert_eq!(node.read("etc/motd").as_deref(), Some("node gen4\n"));
    assert_eq!(node.read("etc/a").as_deref(), Some("rack7 a\n"));
    let attempts = status["attempts"].to_string();
    assert!(
        attempts.contains("v1/default/bundle: 304") && attempts.contains("v1/groups/rack7/bundle: 304"),
        "{attempts}"
    );
    // The new stack is current, the old one previous, sharing blobs.
    assert_eq!(std::fs::read_dir(node.dir.path().join("cache/blobs")).unwrap().count(), 4);
    assert!(node.dir.path().join("cache/previous.stack.json").exists());
}

#[test]
fn the_project_server_serves_plugin_layers() {
    let site = Site::new();
    plugin_site(&site, &[("opt/acme/acme-agent/bin/agent", b"#!/bin/sh\n")]);
    let port = project_server(&site.www());
    let node = Node::new();
    let (code, err, status) = node.boot(&cmd(&site, port, ""));
    assert_eq!(code, 0, "{err}");
    assert_eq!(layers_of(&status), ["default@1/server", "plugin:acme-agent@7/server", "node:node42@1/server"]);
    assert!(node.read("etc/stateless/plugins.json").unwrap().contains("acme-agent"));
}

/// Bench (run by `bench/stack`, ignored otherwise): the loader applying a
/// stack of three small layers against one bundle of the same files, from
/// nginx on loopback, no cache. The loader run is `STATELESS_BENCH_LOADER`
/// (the static release build) or this build's.
#[test]
#[ignore = "a benchmark: bench/stack runs it"]
fn bench_stack_of_three_against_one_bundle() {
    let loader =
        std::env::var("STATELESS_BENCH_LOADER").unwrap_or_else(|_| env!("CARGO_BIN_EXE_stateless-loader").to_owned());
    let rounds: usize = std::env::var("STATELESS_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(21);
    let site = Site::new();
    let one = Site::new();
    // 40 files per layer, ~1 KiB each; the node and group override 10 of
    // the default's each.
    let body = |tag: &str, i: usize| format!("{tag} {i} {}\n", "x".repeat(1000)).into_bytes();
    let mut union: std::collections::BTreeMap<String, Vec<u8>> = std::collections::BTreeMap::new();
    let mut layer_files: Vec<Vec<(String, Vec<u8>)>> = Vec::new();
    for (tag, range) in [("default", 0..40), ("group", 30..70), ("node", 60..100)] {
        let files: Vec<(String, Vec<u8>)> = range.map(|i| (format!("etc/bench/f{i:03}"), body(tag, i))).collect();
        for (p, b) in &files {
            union.insert(p.clone(), b.clone());
        }
        layer_files.push(files);
    }
    let refs = |v: &[(String, Vec<u8>)]| v.iter().map(|(p, b)| (p.clone(), b.clone())).collect::<Vec<_>>();
    for (i, (rel, generation, scope, toml)) in [
        ("v1/default/bundle", 1, Scope::Any, meta("default", None, &[], &[])),
        ("v1/groups/rack7/bundle", 1, Scope::Group("rack7".into()), meta("group", Some("rack7"), &[], &[])),
        ("v1/nodes/node42/bundle", 1, Scope::Node("node42".into()), meta("node", Some("node42"), &["rack7"], &[])),
    ]
    .into_iter()
    .enumerate()
    {
        let files = refs(&layer_files[i]);
        let files: Vec<(&str, &[u8])> = files.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect();
        layer(&site, rel, generation, scope, &toml, None, &files, &[]);
    }
    let files: Vec<(&str, &[u8])> = union.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect();
    let bytes = site.make(1, Scope::Node("node42".into()), &files, true);
    // The single bundle is sealed for the same key: one key file serves both.
    std::fs::create_dir_all(one.www().join("v1/nodes/node42")).unwrap();
    std::fs::write(one.www().join("v1/nodes/node42/bundle"), bytes).unwrap();
    let stack_nginx = Nginx::start(&site.www(), None, "");
    let one_nginx = Nginx::start(&one.www(), None, "");
    let run = |port: u16| -> f64 {
        let node = Node::new();
        let t = std::time::Instant::now();
        let out = std::process::Command::new(&loader)
            .arg("--cmdline")
            .arg(cmd(&site, port, ""))
            .arg("--sysroot")
            .arg(node.sysroot())
            .arg("--run-dir")
            .arg(node.dir.path().join("run"))
            .output()
            .unwrap();
        let took = t.elapsed().as_secs_f64() * 1000.0;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        if std::env::var_os("STATELESS_BENCH_VERBOSE").is_some() {
            let status = std::fs::read_to_string(node.dir.path().join("run/status.json")).unwrap();
            let v: serde_json::Value = serde_json::from_str(&status).unwrap();
            println!("BENCH timings {port}: {}", v["timings_ms"]);
        }
        assert_eq!(node.read("etc/bench/f099").map(|s| s.starts_with("node 99")), Some(true));
        took
    };
    let (mut s, mut o) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        s.push(run(stack_nginx.port));
        o.push(run(one_nginx.port));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ms, mo) = (median(&mut s), median(&mut o));
    println!("BENCH files=100 (3 layers of 40, 1 KiB each) rounds={rounds}");
    println!("BENCH stack of 3 layers: median {ms:.1} ms (min {:.1}, max {:.1})", s[0], s[s.len() - 1]);
    println!("BENCH one bundle:        median {mo:.1} ms (min {:.1}, max {:.1})", o[0], o[o.len() - 1]);
    println!("BENCH difference: {:.1} ms", ms - mo);
}

#[test]
fn each_layer_is_opened_with_its_own_derived_key() {
    use stateless_keys::derive::{Target as KeyTarget, derive};
    let site = Site::new();
    let dir = tempfile::tempdir().unwrap();
    let keys = [
        ("default", derive(&site.key, &KeyTarget::Default).unwrap()),
        ("rack7", derive(&site.key, &KeyTarget::Group("rack7".into())).unwrap()),
        ("node42", derive(&site.key, &KeyTarget::Node("node42".into())).unwrap()),
    ];
    let mut files = Vec::new();
    for (name, k) in &keys {
        let f = dir.path().join(format!("{name}.key"));
        stateless_keys::write_key_file(&f, k, false).unwrap();
        files.push(format!("file:{}", f.display()));
    }
    let put = |rel: &str, generation: u64, scope: Scope, toml: Vec<u8>, content: &[u8], key: &stateless_bundle::Key| {
        let bytes = site.make_sealed(
            generation,
            scope,
            &[("etc/motd", content), (".stateless/layer.toml", &toml)],
            &[],
            Some(key),
        );
        site.put(rel, &bytes);
    };
    put("v1/default/bundle", 1, Scope::Any, meta("default", None, &[], &[]), b"default\n", &keys[0].1);
    put(
        "v1/groups/rack7/bundle",
        1,
        Scope::Group("rack7".into()),
        meta("group", Some("rack7"), &[], &[]),
        b"rack7\n",
        &keys[1].1,
    );
    put(
        "v1/nodes/node42/bundle",
        1,
        Scope::Node("node42".into()),
        meta("node", Some("node42"), &["rack7"], &[]),
        b"node42\n",
        &keys[2].1,
    );
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let cmdline = format!(
        "rd.stateless.server=http://127.0.0.1:{} {NODE} rd.stateless.key={} rd.stateless.timeout=5",
        nginx.port,
        files.join(",")
    );
    let (code, err, status) = node.boot(&cmdline);
    assert_eq!(code, 0, "{err}");
    assert_eq!(layers_of(&status), ["default@1/server", "group:rack7@1/server", "node:node42@1/server"]);
    assert_eq!(node.read("etc/motd").as_deref(), Some("node42\n"));

    // Without the group's key the group layer, and so the stack, is refused.
    node.fresh_sysroot();
    let before = node.tree_digest();
    let cmdline = cmdline.replace(&format!(",{}", files[1]), "");
    let (code, _, status) = node.boot(&cmdline);
    // The cached stack needs the group's key too: nothing applies.
    assert_ne!(code, 0);
    assert_eq!(node.tree_digest(), before);
    let refused: Vec<_> = status["outcomes"].as_array().unwrap().iter().filter(|o| o["result"] == "refused").collect();
    assert_eq!(refused[0]["kind"], "key", "{status}");
    assert!(refused[0]["from"].as_str().unwrap().ends_with("/v1/groups/rack7/bundle"), "{status}");
    assert!(status["warnings"].to_string().contains("layer group rack7: "), "{status}");
    assert_eq!(refused.last().unwrap()["source"], "cache-current", "{status}");
}
