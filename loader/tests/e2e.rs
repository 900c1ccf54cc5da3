//! The loader binary against real servers on 127.0.0.1: nginx serving the
//! protocol's directory layout (HTTP and HTTPS), dnsmasq answering SRV
//! queries, and fault-injecting proxies for cut and stalled transfers.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant};

use stateless_bundle::Scope;
use support::noise::incompressible;
use support::{Dnsmasq, Nginx, Node, Proxy, Site};

const NODE: &str = "rd.stateless.node=node42";

fn node_scope() -> Scope {
    Scope::Node("node42".into())
}

fn key_arg(site: &Site) -> String {
    format!("rd.stateless.key=file:{}", site.key_file.display())
}

#[test]
fn fresh_fetch_applies_and_caches() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 3, node_scope(), &[("etc/motd", b"hello node42\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let (code, err, status) =
        node.boot(&format!("rd.stateless.server=http://127.0.0.1:{} {NODE} {}", nginx.port, key_arg(&site)));
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("hello node42\n"));
    assert_eq!(node.read("etc/base").as_deref(), Some("from the image\n"));
    assert_eq!(status["source"], "server");
    assert_eq!(status["generation"], 3);
    assert_eq!(status["key_source"].as_str().unwrap(), format!("key file {}", site.key_file.display()));
    assert!(err.contains("stateless: applied generation 3 from http://127.0.0.1"), "{err}");
    assert!(node.dir.path().join("cache/current.bundle").exists());
    assert_eq!(node.staging_dirs(), Vec::<String>::new());
}

#[test]
fn missing_cache_device_is_a_warning_not_a_failure() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 3, node_scope(), &[("etc/motd", b"hello node42\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let cmdline = format!(
        "rd.stateless.server=http://127.0.0.1:{} {NODE} {} rd.stateless.cache=LABEL=sl-no-such-cache",
        nginx.port,
        key_arg(&site)
    );
    let (code, err, status) = node.boot_with(&cmdline, false);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "server");
    let warnings = status["warnings"].to_string();
    assert!(warnings.contains("cache device LABEL=sl-no-such-cache not found; booting without a cache"), "{warnings}");
}

#[test]
fn falls_back_from_node_to_group_to_default() {
    let site = Site::new();
    site.publish("v1/default/bundle", 1, Scope::Any, &[("etc/motd", b"default\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let base = format!("rd.stateless.server=http://127.0.0.1:{} {NODE} {}", nginx.port, key_arg(&site));
    let (code, err, status) = node.boot(&base);
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("default\n"));
    let attempts = status["attempts"].to_string();
    assert!(attempts.contains("nodes/node42/bundle: 404"), "{attempts}");
    site.publish("v1/groups/rack7/bundle", 2, Scope::Group("rack7".into()), &[("etc/motd", b"rack7\n")], true);
    node.fresh_sysroot();
    let (code, err, _) = node.boot(&format!("{base} rd.stateless.group=rack7"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("rack7\n"));
}

#[test]
fn explicit_urls_fail_over_in_order() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"second\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let dead = support::free_port();
    let node = Node::new();
    let (code, err, status) = node.boot(&format!(
        "rd.stateless.server=http://127.0.0.1:{dead},http://127.0.0.1:{} {NODE} {}",
        nginx.port,
        key_arg(&site)
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("second\n"));
    let attempts = status["attempts"].as_array().unwrap();
    assert!(attempts[0].as_str().unwrap().contains(&dead.to_string()), "{attempts:?}");
}

#[test]
fn srv_discovery_prefers_priority_and_fails_over() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"via srv\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let dead = support::free_port();
    // The best (lowest) priority points at a dead port; the loader must
    // fail over to the next priority.
    let dns = Dnsmasq::start(
        &[(10, 100, dead, "down.lab.test"), (20, 60, nginx.port, "up.lab.test"), (20, 40, nginx.port, "up2.lab.test")],
        &[("down.lab.test", "127.0.0.1"), ("up.lab.test", "127.0.0.1"), ("up2.lab.test", "127.0.0.1")],
    );
    let node = Node::new();
    let (code, err, status) = node.boot(&format!(
        "rd.stateless.domain=lab.test rd.stateless.dns=127.0.0.1:{} rd.stateless.insecure {NODE} {}",
        dns.port,
        key_arg(&site)
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("via srv\n"));
    let attempts = status["attempts"].as_array().unwrap();
    assert!(attempts[0].as_str().unwrap().starts_with(&format!("http://down.lab.test:{dead}/")), "{attempts:?}");
    assert!(status["server"].as_str().unwrap().contains(".lab.test:"), "{status}");
}

#[test]
fn not_modified_uses_the_cache() {
    let site = Site::new();
    let bytes = site.publish("v1/nodes/node42/bundle", 5, node_scope(), &[("etc/motd", b"v5\n")], true);
    let digest = stateless_bundle::BundleReader::new(&bytes[..]).unwrap().raw_header().digest_hex();
    // nginx's own ETag is mtime-size; a site that wants 304s for its blades
    // answers If-None-Match with the bundle digest, as the project's server does.
    let nginx =
        Nginx::start(&site.www(), None, &format!("if ($http_if_none_match = '\"{digest}\"') {{ return 304; }}"));
    let node = Node::new();
    let cmd = format!("rd.stateless.server=http://127.0.0.1:{} {NODE} {}", nginx.port, key_arg(&site));
    let (code, err, _) = node.boot(&cmd);
    assert_eq!(code, 0, "{err}");
    node.fresh_sysroot();
    let (code, err, status) = node.boot(&cmd);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-current", "{status}");
    assert!(status["attempts"].to_string().contains(": 304"), "{status}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("v5\n"));
}

#[test]
fn server_down_boots_from_cache_then_previous() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"gen1\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let cmd = |port: u16| {
        format!("rd.stateless.server=http://127.0.0.1:{port} {NODE} {} rd.stateless.timeout=3", key_arg(&site))
    };
    assert_eq!(node.boot(&cmd(nginx.port)).0, 0);
    site.publish("v1/nodes/node42/bundle", 2, node_scope(), &[("etc/motd", b"gen2\n")], true);
    assert_eq!(node.boot(&cmd(nginx.port)).0, 0);
    let port = nginx.port;
    drop(nginx);
    node.fresh_sysroot();
    let started = Instant::now();
    let (code, err, status) = node.boot(&cmd(port));
    assert!(started.elapsed() < Duration::from_secs(10), "budget not kept: {:?}", started.elapsed());
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-current");
    assert_eq!(node.read("etc/motd").as_deref(), Some("gen2\n"));
    assert!(err.contains("applied cached generation 2 (fetched"), "{err}");
    // Corrupt the current slot: the previous one is used.
    let cur = node.dir.path().join("cache/current.bundle");
    let mut b = std::fs::read(&cur).unwrap();
    let n = b.len();
    b[n - 10] ^= 1;
    std::fs::write(&cur, b).unwrap();
    node.fresh_sysroot();
    let (code, err, status) = node.boot(&cmd(port));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-previous", "{status}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("gen1\n"));
}

#[test]
fn forged_fetched_times_in_the_cache_do_not_stop_a_cached_boot() {
    // current.json is not authenticated: its `fetched` time may be anything
    // an i64 holds. Past the year 9999 RFC 3339 has no form for it (the
    // formatter fails, and `to_string` panicked after the cached bundle was
    // applied); before 1970 neither.
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"gen1\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let cmd = |port: u16| {
        format!("rd.stateless.server=http://127.0.0.1:{port} {NODE} {} rd.stateless.timeout=3", key_arg(&site))
    };
    assert_eq!(node.boot(&cmd(nginx.port)).0, 0);
    let port = nginx.port;
    drop(nginx);
    let meta = node.dir.path().join("cache/current.json");
    let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    for fetched in [i64::MAX, 253_402_300_800, -1, i64::MIN] {
        let mut j = good.clone();
        j["fetched"] = fetched.into();
        std::fs::write(&meta, serde_json::to_vec(&j).unwrap()).unwrap();
        node.fresh_sysroot();
        let (code, err, status) = node.boot(&cmd(port));
        assert_eq!(code, 0, "fetched {fetched}: {err}");
        assert_eq!(status["source"], "cache-current", "fetched {fetched}: {status}");
        assert_eq!(node.read("etc/motd").as_deref(), Some("gen1\n"));
        assert!(err.contains(&format!("(fetched {fetched} (Unix time))")), "fetched {fetched}: {err}");
    }
}

#[test]
fn tampered_and_truncated_bundles_leave_the_root_untouched() {
    let site = Site::new();
    let good = site.make(1, node_scope(), &[("etc/motd", b"good\n"), ("usr/lib/blob", &[7u8; 300_000])], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let cmd =
        format!("rd.stateless.server=http://127.0.0.1:{} {NODE} {} rd.stateless.timeout=3", nginx.port, key_arg(&site));
    let before = node.tree_digest();
    let mut tampered = good.clone();
    let n = tampered.len();
    tampered[n / 2] ^= 0x20;
    // The last chunk's tag: everything before it authenticated and was
    // extracted into staging.
    let mut last = good.clone();
    last[n - 3] ^= 1;
    for (what, bytes) in
        [("tampered", tampered), ("tampered last chunk", last), ("truncated", good[..good.len() * 2 / 3].to_vec())]
    {
        site.put("v1/nodes/node42/bundle", &bytes);
        let (code, err, status) = node.boot(&cmd);
        assert_eq!(code, 10, "{what}: {err}");
        assert_eq!(status["result"], "failed");
        assert_eq!(node.tree_digest(), before, "{what}: the root changed");
        assert!(err.contains("no bundle applied") && err.contains("onfail=emergency"), "{what}: {err}");
        assert_eq!(node.staging_dirs(), Vec::<String>::new(), "{what}");
    }
    // With a cache, the tampered bundle is refused and the cache is used.
    site.put("v1/nodes/node42/bundle", &good);
    assert_eq!(node.boot(&cmd).0, 0);
    let mut tampered = good.clone();
    tampered[400] ^= 1;
    site.put("v1/nodes/node42/bundle", &tampered);
    node.fresh_sysroot();
    let (code, err, status) = node.boot(&cmd);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-current");
    assert!(err.contains("authentication failed"), "{err}");
}

#[test]
fn a_refused_bundle_moves_on_to_the_next_server() {
    let site = Site::new();
    let good = site.make(2, node_scope(), &[("etc/motd", b"from the mirror\n")], true);
    let mirror = tempfile::tempdir().unwrap();
    let at = mirror.path().join("v1/nodes/node42");
    std::fs::create_dir_all(&at).unwrap();
    std::fs::write(at.join("bundle"), &good).unwrap();
    let mut tampered = good.clone();
    tampered[400] ^= 1;
    site.put("v1/nodes/node42/bundle", &tampered);
    let bad = Nginx::start(&site.www(), None, "");
    let ok = Nginx::start(mirror.path(), None, "");
    let node = Node::new();
    let (code, err, status) = node.boot(&format!(
        "rd.stateless.server=http://127.0.0.1:{},http://127.0.0.1:{} {NODE} {}",
        bad.port,
        ok.port,
        key_arg(&site)
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("from the mirror\n"));
    let attempts = status["attempts"].to_string();
    assert!(attempts.contains(&format!("127.0.0.1:{}/v1/nodes/node42/bundle: refused", bad.port)), "{attempts}");
    // Both refuse: the cache is used, and the refusals are what the console says.
    std::fs::write(at.join("bundle"), &tampered).unwrap();
    node.fresh_sysroot();
    let (code, err, status) = node.boot(&format!(
        "rd.stateless.server=http://127.0.0.1:{},http://127.0.0.1:{} {NODE} {}",
        bad.port,
        ok.port,
        key_arg(&site)
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-current");
    assert_eq!(node.read("etc/motd").as_deref(), Some("from the mirror\n"));
    let warnings = status["warnings"].to_string();
    for port in [bad.port, ok.port] {
        assert!(warnings.contains(&format!("127.0.0.1:{port}/v1/nodes/node42/bundle refused")), "{warnings}");
    }
}

#[test]
fn rollback_scope_and_downgrade_are_refused() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 5, node_scope(), &[("etc/motd", b"gen5\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let cmd =
        format!("rd.stateless.server=http://127.0.0.1:{} {NODE} {} rd.stateless.timeout=3", nginx.port, key_arg(&site));
    assert_eq!(node.boot(&cmd).0, 0);
    site.publish("v1/nodes/node42/bundle", 4, node_scope(), &[("etc/motd", b"gen4\n")], true);
    let (code, err, status) = node.boot(&cmd);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rollback refused: bundle generation 4 is older than generation 5"), "{err}");
    assert_eq!(status["source"], "cache-current");
    assert_eq!(node.read("etc/motd").as_deref(), Some("gen5\n"));

    let other = Node::new();
    site.publish("v1/nodes/node42/bundle", 6, Scope::Node("node43".into()), &[("etc/motd", b"x\n")], true);
    let (code, err, _) = other.boot(&cmd);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("bundle is for node:node43, this is node node42"), "{err}");

    site.publish("v1/nodes/node42/bundle", 7, node_scope(), &[("etc/motd", b"plain\n")], false);
    let (code, err, _) = other.boot(&cmd);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("not encrypted but a key is configured"), "{err}");
    // An unencrypted bundle over plain http needs rd.stateless.insecure.
    let (code, err, _) = other.boot(&format!(
        "rd.stateless.server=http://127.0.0.1:{} {NODE} rd.stateless.key=none rd.stateless.timeout=3",
        nginx.port
    ));
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("unencrypted bundle over plain HTTP"), "{err}");
    let (code, err, _) = other.boot(&format!(
        "rd.stateless.server=http://127.0.0.1:{} {NODE} rd.stateless.key=none rd.stateless.insecure",
        nginx.port
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(other.read("etc/motd").as_deref(), Some("plain\n"));
}

#[test]
fn wrong_key_names_what_was_offered() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"x\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let other = Site::new();
    let node = Node::new();
    let (code, err, _) = node.boot(&format!(
        "rd.stateless.server=http://127.0.0.1:{} {NODE} {} rd.stateless.timeout=3",
        nginx.port,
        key_arg(&other)
    ));
    assert_eq!(code, 10, "{err}");
    let needed = site.key.id().short();
    let had = other.key.id().short();
    assert!(
        err.contains(&format!("bundle needs key {needed}; key file")) && err.contains(&format!("had {had}")),
        "{err}"
    );
    let (code, err, _) = node.boot(&format!(
        "rd.stateless.server=http://127.0.0.1:{} {NODE} rd.stateless.key=none rd.stateless.timeout=3",
        nginx.port
    ));
    assert_eq!(code, 10);
    assert!(err.contains(&format!("bundle needs key {needed} but rd.stateless.key=none")), "{err}");
}

#[test]
fn https_with_pin_or_ca() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"tls\n")], false);
    let (ca, cert, key, pin) = support::self_signed(site.dir.path());
    let nginx = Nginx::start(&site.www(), Some((&cert, &key)), "");
    let node = Node::new();
    let base = format!(
        "rd.stateless.server=https://127.0.0.1:{} {NODE} rd.stateless.key=none rd.stateless.timeout=3",
        nginx.port
    );
    let (code, err, _) = node.boot(&format!("{base} rd.stateless.pin=sha256:{pin}"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("tls\n"));
    node.fresh_sysroot();
    let (code, err, _) = node.boot(&format!("{base} rd.stateless.ca={}", ca.display()));
    assert_eq!(code, 0, "{err}");
    // A node with nothing cached: a wrong pin or no trust at all fails.
    let bare = Node::new();
    let wrong = "sha256:".to_owned() + &"00".repeat(32);
    let (code, err, _) = bare.boot(&format!("{base} rd.stateless.pin={wrong}"));
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("does not match rd.stateless.pin"), "{err}");
    let (code, err, _) = bare.boot(&base);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("no trust for https"), "{err}");
}

#[test]
fn cut_transfer_resumes_with_range() {
    let site = Site::new();
    // Incompressible (xorshift), so the bundle is as large as the file.
    let big = incompressible(3_000_000, 0x9E37_79B9_7F4A_7C15);
    let bundle = site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("usr/lib/big", &big)], true);
    let nginx = Nginx::start(&site.www(), None, "");
    // The first two connections are cut after ~1 MB of response, while the
    // bundle is being verified into staging.
    let proxy = Proxy::cutting(nginx.port, 1_000_000, 2);
    let node = Node::new();
    let (code, err, status) =
        node.boot(&format!("rd.stateless.server=http://127.0.0.1:{} {NODE} {}", proxy.port, key_arg(&site)));
    assert_eq!(code, 0, "{err}");
    assert!(status["attempts"][0].as_str().unwrap().contains("2 resumes"), "{status}");
    // Three for the bundle, one for the boot report after it.
    assert_eq!(proxy.connections.load(std::sync::atomic::Ordering::Relaxed), 4);
    assert_eq!(std::fs::read(node.sysroot().join("usr/lib/big")).unwrap(), big);
    // The copy kept for the cache is the bundle byte for byte.
    assert!(std::fs::read(node.dir.path().join("cache/current.bundle")).unwrap() == bundle);
    assert!(!node.dir.path().join("run/download.bundle").exists());
    assert_eq!(node.staging_dirs(), Vec::<String>::new());
}

#[test]
fn cut_transfer_without_ranges_starts_over() {
    let site = Site::new();
    let big = incompressible(3_000_000, 0x2545_F491_4F6C_DD1D);
    let bundle = site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("usr/lib/big", &big)], true);
    let nginx = Nginx::start(&site.www(), None, "");
    // The first connection is cut after ~1 MB; the resume's Range is
    // dropped, so the server sends the whole bundle again: what was staged
    // is thrown away and the transfer starts over.
    let proxy = Proxy::cutting_without_ranges(nginx.port, 1_000_000, 1);
    let node = Node::new();
    let (code, err, status) =
        node.boot(&format!("rd.stateless.server=http://127.0.0.1:{} {NODE} {}", proxy.port, key_arg(&site)));
    assert_eq!(code, 0, "{err}");
    let attempts = status["attempts"].to_string();
    assert!(attempts.contains("starting over"), "{attempts}");
    assert!(status["attempts"].as_array().unwrap().last().unwrap().as_str().unwrap().contains(": 200, "), "{status}");
    assert_eq!(std::fs::read(node.sysroot().join("usr/lib/big")).unwrap(), big);
    assert!(std::fs::read(node.dir.path().join("cache/current.bundle")).unwrap() == bundle);
    assert_eq!(node.staging_dirs(), Vec::<String>::new());
}

#[test]
fn stalled_server_hits_the_budget() {
    let site = Site::new();
    let stall = Proxy::stalling();
    let node = Node::new();
    let started = Instant::now();
    let (code, err, status) = node.boot(&format!(
        "rd.stateless.server=http://127.0.0.1:{} {NODE} {} rd.stateless.timeout=3",
        stall.port,
        key_arg(&site)
    ));
    let took = started.elapsed();
    assert_eq!(code, 10, "{err}");
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(8), "took {took:?}");
    assert!(
        status["message"].as_str().unwrap().contains("gave up after 3 s")
            || status["message"].as_str().unwrap().contains("after 3 s"),
        "{status}"
    );
}

#[test]
fn a_root_that_cannot_be_made_writable_is_reported_in_status_json() {
    // No sysroot at all: the loader cannot even look at the root, so the
    // pipeline never starts; the reason must still reach status.json.
    let node = Node::new();
    std::fs::remove_dir_all(node.sysroot()).unwrap();
    let (code, err, status) =
        node.boot("rd.stateless.server=http://127.0.0.1:9/ rd.stateless.node=node42 rd.stateless.onfail=continue");
    assert_eq!(code, 11, "{err}");
    assert_eq!(status["result"], "failed", "{status}");
    assert_eq!(status["source"], "none");
    assert_eq!(status["onfail"], "continue");
    let message = status["message"].as_str().unwrap();
    assert!(message.starts_with("no bundle applied: making the root writable: "), "{message}");
    assert!(message.ends_with("; onfail=continue"), "{message}");
    assert!(err.contains(message), "the console line is the status message: {err}");
}

// ---- Transport hardening: redirects, schemes, DNS deadlines, SRV targets,
// ---- the command line's bytes (issue 12, items 1, 18, 19, 22, 25).

/// An unencrypted bundle, published for `key=none` sites that rely on TLS.
fn plain_site() -> Site {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"tls only\n")], false);
    site
}

#[test]
fn redirect_from_https_to_plain_http_is_refused() {
    let site = plain_site();
    let (_ca, cert, key, pin) = support::self_signed(site.dir.path());
    let plain = Nginx::start(&site.www(), None, "");
    // Every redirect status, the scheme in any case, absolute or
    // scheme-relative-turned-plain: none may take the node off TLS.
    for (status, scheme) in [(301, "http"), (302, "HTTP"), (303, "Http"), (307, "hTtP"), (308, "http")] {
        let redirect = format!("return {status} {scheme}://127.0.0.1:{}$request_uri;", plain.port);
        let tls = Nginx::start(&site.www(), Some((&cert, &key)), &redirect);
        let node = Node::new();
        let (code, err, status_json) = node.boot(&format!(
            "rd.stateless.server=https://127.0.0.1:{} {NODE} rd.stateless.key=none rd.stateless.pin=sha256:{pin} rd.stateless.timeout=5",
            tls.port
        ));
        assert_eq!(code, 10, "{status} {scheme}: {err}");
        assert!(err.contains("it would drop https for plain http"), "{status} {scheme}: {err}");
        assert_eq!(node.read("etc/motd"), None, "{status} {scheme}: applied over plain http");
        assert!(status_json["final_url"].is_null(), "{status_json}");
        // A verdict on that server's answer, typed, and said once.
        let first = &outcomes(&status_json)[0];
        assert_eq!(
            (first["result"].as_str(), first["kind"].as_str()),
            (Some("refused"), Some("redirect-downgrade")),
            "{status_json}"
        );
        assert_eq!(outcomes(&status_json).len(), 1, "the server is not asked again: {status_json}");
        assert_eq!(err.matches("it would drop https for plain http").count(), 2, "warning and final line: {err}");
    }
}

#[test]
fn redirects_that_keep_or_raise_tls_are_followed_and_recorded() {
    let site = plain_site();
    let (_ca, cert, key, pin) = support::self_signed(site.dir.path());
    let target = Nginx::start(&site.www(), Some((&cert, &key)), "");
    let trust = format!("{NODE} rd.stateless.key=none rd.stateless.pin=sha256:{pin} rd.stateless.timeout=5");
    let final_url = format!("https://127.0.0.1:{}/v1/nodes/node42/bundle", target.port);

    // https to https on another server: followed, with the same pin.
    let hop = Nginx::start(
        &site.www(),
        Some((&cert, &key)),
        &format!("return 302 https://127.0.0.1:{}$request_uri;", target.port),
    );
    let node = Node::new();
    let (code, err, status) = node.boot(&format!("rd.stateless.server=https://127.0.0.1:{} {trust}", hop.port));
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("tls only\n"));
    assert_eq!(status["final_url"], final_url.as_str(), "{status}");
    assert_eq!(status["server"], format!("https://127.0.0.1:{}/v1/nodes/node42/bundle", hop.port).as_str());
    assert!(err.contains(&format!("(redirected to {final_url})")), "{err}");

    // Plain http upgraded to https: the bundle came over TLS, so an
    // unencrypted one is accepted without rd.stateless.insecure.
    let upgrade =
        Nginx::start(&site.www(), None, &format!("return 301 https://127.0.0.1:{}$request_uri;", target.port));
    let node = Node::new();
    let (code, err, status) = node.boot(&format!("rd.stateless.server=http://127.0.0.1:{} {trust}", upgrade.port));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["final_url"], final_url.as_str(), "{status}");

    // Without redirects the final URL is the URL.
    let node = Node::new();
    let (code, err, status) = node.boot(&format!("rd.stateless.server=https://127.0.0.1:{} {trust}", target.port));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["final_url"], final_url.as_str(), "{status}");

    // The pin still applies after a hop: a redirect to a server with
    // another key fails.
    let other = tempfile::tempdir().unwrap();
    let (_, cert2, key2, _) = support::self_signed(other.path());
    let stranger = Nginx::start(&site.www(), Some((&cert2, &key2)), "");
    let hop2 = Nginx::start(
        &site.www(),
        Some((&cert, &key)),
        &format!("return 307 https://127.0.0.1:{}$request_uri;", stranger.port),
    );
    let node = Node::new();
    let (code, err, _) = node.boot(&format!("rd.stateless.server=https://127.0.0.1:{} {trust}", hop2.port));
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("does not match rd.stateless.pin"), "{err}");
    assert_eq!(node.read("etc/motd"), None);

    // A redirect loop ends after a few hops.
    let looping = Nginx::start(&site.www(), Some((&cert, &key)), "return 302 /again$request_uri;");
    let node = Node::new();
    let (code, err, status) = node.boot(&format!("rd.stateless.server=https://127.0.0.1:{} {trust}", looping.port));
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("more than 3 redirects"), "{err}");
    assert_eq!(outcomes(&status)[0]["kind"], "redirect", "{status}");
}

#[test]
fn scheme_case_does_not_get_around_the_plain_http_refusal() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"plain\n")], false);
    let nginx = Nginx::start(&site.www(), None, "");
    for scheme in ["HTTP", "Http", "hTTp", "http"] {
        let node = Node::new();
        let base = format!("rd.stateless.server={scheme}://127.0.0.1:{} {NODE} rd.stateless.key=none", nginx.port);
        let (code, err, _) = node.boot(&format!("{base} rd.stateless.timeout=3"));
        assert_eq!(code, 10, "{scheme}: {err}");
        assert!(err.contains("unencrypted bundle over plain HTTP"), "{scheme}: {err}");
        assert_eq!(node.read("etc/motd"), None, "{scheme}");
        let (code, err, _) = node.boot(&format!("{base} rd.stateless.insecure"));
        assert_eq!(code, 0, "{scheme}: {err}");
    }
    // And an upper-case https is https: it needs trust, and with a pin works.
    let (_ca, cert, key, pin) = support::self_signed(site.dir.path());
    let tls = Nginx::start(&site.www(), Some((&cert, &key)), "");
    for scheme in ["HTTPS", "HttpS"] {
        let node = Node::new();
        let base = format!("rd.stateless.server={scheme}://127.0.0.1:{} {NODE} rd.stateless.key=none", tls.port);
        let (code, err, status) = node.boot(&format!("{base} rd.stateless.timeout=3"));
        assert_eq!(code, 10, "{scheme}: {err}");
        assert!(err.contains("no trust for https"), "{scheme}: {err}");
        assert_eq!(outcomes(&status)[0]["kind"], "no-trust", "{scheme}: {status}");
        let (code, err, _) = node.boot(&format!("{base} rd.stateless.pin=sha256:{pin}"));
        assert_eq!(code, 0, "{scheme}: {err}");
    }
}

mod fake_dns {
    //! A name server on 127.0.0.1 written for one test: it answers from a
    //! closure, and can drip its TCP answers a byte at a time.
    use std::io::{Read, Write};
    use std::net::{TcpListener, UdpSocket};
    use std::time::Duration;

    use hickory_proto::op::{Message, MessageType, OpCode};

    /// Starts the server; returns its port (UDP, and TCP when `drip`).
    pub fn start(answer: impl Fn(&Message) -> Option<Message> + Send + 'static, drip: bool) -> u16 {
        let (udp, port) = loop {
            let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = tcp.local_addr().unwrap().port();
            if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)) {
                if drip {
                    std::thread::spawn(move || drip_forever(tcp));
                }
                break (udp, port);
            }
        };
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = udp.recv_from(&mut buf) {
                let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
                if let Some(a) = answer(&q) {
                    let _ = udp.send_to(&a.to_vec().unwrap(), peer);
                }
            }
        });
        port
    }

    /// A response skeleton for `q`.
    pub fn reply(q: &Message) -> Message {
        let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        m.metadata.recursion_available = true;
        m.queries.clone_from(&q.queries);
        m
    }

    fn drip_forever(tcp: TcpListener) {
        for conn in tcp.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut head = [0u8; 512];
                let _ = conn.read(&mut head);
                // A 65535-byte answer, one byte a second.
                for _ in 0..120 {
                    if conn.write_all(&[0xff]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        }
    }
}

#[test]
fn dns_over_tcp_dripped_a_byte_a_second_ends_within_the_budget() {
    // UDP says "truncated, ask over TCP"; TCP then drips.
    let port = fake_dns::start(
        |q| {
            let mut m = fake_dns::reply(q);
            m.metadata.truncation = true;
            Some(m)
        },
        true,
    );
    let node = Node::new();
    let t = Instant::now();
    let (code, err, status) = node.boot(&format!(
        "rd.stateless.domain=lab.test rd.stateless.dns=127.0.0.1:{port} {NODE} rd.stateless.key=none rd.stateless.timeout=1 rd.stateless.onfail=reboot"
    ));
    let took = t.elapsed();
    assert_eq!(code, 12, "{err}");
    assert!(took < Duration::from_secs(4), "the loader took {took:?} with a 1 s budget: {err}");
    assert_eq!(status["onfail"], "reboot", "{status}");
    assert!(status["message"].as_str().unwrap().contains("DNS SRV _stateless._tcp.lab.test"), "{status}");
}

#[test]
fn srv_targets_that_are_not_host_names_are_dropped() {
    use hickory_proto::rr::rdata::{A, SRV};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"good target\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let port = nginx.port;
    let trap = Site::new();
    trap.publish("x/v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"injected\n")], true);
    let trap_nginx = Nginx::start(&trap.www(), None, "");
    let trap_port = trap_nginx.port;
    let dns = fake_dns::start(
        move |q| {
            let mut m = fake_dns::reply(q);
            let question = q.queries.first()?;
            let qname = question.name().clone();
            let good = Name::from_ascii("up.lab.test.").unwrap();
            match question.query_type() {
                RecordType::SRV => {
                    // Targets that would put a port, a path or user
                    // information into the URL, ahead of the good one.
                    let bad: [&[u8]; 4] = [b"127.0.0.1:1/x", b"127.0.0.1\\:1", b"user@127.0.0.1", b"up\xff"];
                    for (i, label) in bad.iter().enumerate() {
                        let target = Name::from_labels(vec![*label, b"lab", b"test"]).unwrap();
                        let srv = SRV::new(1 + i as u16, 0, trap_port, target);
                        m.answers.push(Record::from_rdata(qname.clone(), 60, RData::SRV(srv)));
                    }
                    m.answers.push(Record::from_rdata(qname, 60, RData::SRV(SRV::new(20, 0, port, good))));
                }
                RecordType::A if qname == good => {
                    m.answers.push(Record::from_rdata(qname, 60, RData::A(A::new(127, 0, 0, 1))));
                }
                _ => {}
            }
            Some(m)
        },
        false,
    );
    let node = Node::new();
    let (code, err, status) = node.boot(&format!(
        "rd.stateless.domain=lab.test rd.stateless.dns=127.0.0.1:{dns} rd.stateless.insecure {NODE} {} rd.stateless.timeout=5",
        key_arg(&site)
    ));
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("good target\n"));
    let attempts = status["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert!(attempts[0].as_str().unwrap().starts_with(&format!("http://up.lab.test:{port}/v1/")), "{attempts:?}");
    let warnings = status["warnings"].to_string();
    assert_eq!(warnings.matches("is not a host name; record ignored").count(), 4, "{warnings}");
}

#[test]
fn a_byte_that_is_not_utf8_on_the_kernel_command_line_is_not_fatal() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"lossy\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let boot = |node: &Node, line: &[u8]| {
        let file = node.dir.path().join("cmdline");
        std::fs::write(&file, line).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stateless-loader"))
            .arg("--cmdline-file")
            .arg(&file)
            .arg("--sysroot")
            .arg(node.sysroot())
            .arg("--run-dir")
            .arg(node.dir.path().join("run"))
            .arg("--cache-dir")
            .arg(node.dir.path().join("cache"))
            .env("STATELESS_LOG_STDERR", "1")
            .output()
            .unwrap();
        let status: serde_json::Value =
            serde_json::from_slice(&std::fs::read(node.dir.path().join("run/status.json")).unwrap_or_default())
                .unwrap_or(serde_json::Value::Null);
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned(), status)
    };
    // A stray byte in another word: the boot goes on.
    let node = Node::new();
    let mut line = b"BOOT_IMAGE=/vmlinuz-\xff\xfe quiet label=caf\xe9 ".to_vec();
    line.extend_from_slice(
        format!("rd.stateless.server=http://127.0.0.1:{} {NODE} {}\n", nginx.port, key_arg(&site)).as_bytes(),
    );
    let (code, err, status) = boot(&node, &line);
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("lossy\n"));
    assert_eq!(status["result"], "applied");
    // Nothing to fetch: onfail decides, not the stray byte.
    let node = Node::new();
    let dead = support::free_port();
    let mut line = b"root=LABEL=\x80\x81 ".to_vec();
    line.extend_from_slice(
        format!(
            "rd.stateless.server=http://127.0.0.1:{dead} {NODE} rd.stateless.timeout=1 rd.stateless.onfail=poweroff"
        )
        .as_bytes(),
    );
    let (code, err, status) = boot(&node, &line);
    assert_eq!(code, 13, "{err}");
    assert_eq!(status["onfail"], "poweroff");
}

// ---------------------------------------------------------------------------
// The pipeline's boundaries (issue 12.2, 12.3, 12.8; issue 19): panics and
// the time budget in a bundle's processing, files planted in the run
// directory, typed refusal kinds in status.json, and what the console says
// once.
// ---------------------------------------------------------------------------

/// The debug build's fault injection (loader/src/guard.rs).
const FAULT: &str = "STATELESS_LOADER_FAULT";

fn outcomes(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["outcomes"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_panic_in_processing_refuses_that_source_and_falls_back() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"gen1\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let cmd = format!("rd.stateless.server=http://127.0.0.1:{} {NODE} {}", nginx.port, key_arg(&site));
    assert_eq!(node.boot(&cmd).0, 0);
    site.publish("v1/nodes/node42/bundle", 2, node_scope(), &[("etc/motd", b"gen2\n")], true);
    site.publish("v1/nodes/node42/bundle", 3, node_scope(), &[("usr/lib/big", &incompressible(3_000_000, 7))], true);
    node.fresh_sysroot();
    // The panic happens mid-extraction (on a decoder thread for this
    // multi-frame bundle): the server's bundle is refused, its staging is
    // gone, and the cache is used.
    let (code, err, status) = node.boot_env(&cmd, true, &[(FAULT, "panic@server")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-current", "{status}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("gen1\n"));
    assert!(!node.sysroot().join("usr/lib/big").exists());
    assert_eq!(node.staging_dirs(), Vec::<String>::new());
    assert!(!node.dir.path().join("run/download.bundle").exists());
    let first = &outcomes(&status)[0];
    assert_eq!(first["source"], "server", "{status}");
    assert_eq!(first["result"], "refused", "{status}");
    assert_eq!(first["kind"], "internal", "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(message.contains("internal error while processing the bundle"), "{message}");
    assert!(message.contains("applied cached generation 1"), "{message}");
    assert!(err.contains("internal error: fault injected by STATELESS_LOADER_FAULT"), "{err}");

    // A panic in the current slot: the previous one is used.
    drop(nginx);
    site.publish("v1/nodes/node42/bundle", 2, node_scope(), &[("etc/motd", b"gen2\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let cmd = format!("rd.stateless.server=http://127.0.0.1:{} {NODE} {}", nginx.port, key_arg(&site));
    assert_eq!(node.boot(&cmd).0, 0);
    let down = format!("rd.stateless.server=http://127.0.0.1:9 {NODE} {} rd.stateless.timeout=1", key_arg(&site));
    node.fresh_sysroot();
    let (code, err, status) = node.boot_env(&down, true, &[(FAULT, "panic@cache-current")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-previous", "{status}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("gen1\n"));
    assert_eq!(node.staging_dirs(), Vec::<String>::new());
    let slot = outcomes(&status).into_iter().find(|o| o["source"] == "cache-current").unwrap();
    assert_eq!((slot["result"].as_str(), slot["kind"].as_str()), (Some("refused"), Some("internal")), "{status}");
}

#[test]
fn a_panic_with_nothing_to_fall_back_to_still_writes_status_json() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"x\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let before = node.tree_digest();
    let cmd = format!(
        "rd.stateless.server=http://127.0.0.1:{} {NODE} {} rd.stateless.onfail=reboot",
        nginx.port,
        key_arg(&site)
    );
    let (code, err, status) = node.boot_env(&cmd, false, &[(FAULT, "panic@server")]);
    assert_eq!(code, 12, "{err}");
    assert_eq!(status["result"], "failed", "{status}");
    assert_eq!(status["onfail"], "reboot", "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(message.starts_with("no bundle applied: bundle from http://127.0.0.1:"), "{message}");
    assert!(message.contains("internal error while processing the bundle"), "{message}");
    assert!(message.ends_with("; no cache; onfail=reboot"), "{message}");
    assert_eq!(node.tree_digest(), before, "the root changed");
    assert_eq!(node.staging_dirs(), Vec::<String>::new());
}

#[test]
fn the_budget_covers_extraction_and_says_so() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"gen1\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let cmd = format!("rd.stateless.server=http://127.0.0.1:{} {NODE} {}", nginx.port, key_arg(&site));
    assert_eq!(node.boot(&cmd).0, 0);
    site.publish("v1/nodes/node42/bundle", 2, node_scope(), &[("etc/motd", b"gen2\n")], true);
    node.fresh_sysroot();
    // The whole bundle arrives at once; its last entries "take" 2.5 s to
    // extract against a 2 s budget: refused, the cache is used.
    let started = Instant::now();
    let (code, err, status) =
        node.boot_env(&format!("{cmd} rd.stateless.timeout=2"), true, &[(FAULT, "sleep=2500@server")]);
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-current", "{status}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("gen1\n"));
    assert_eq!(node.staging_dirs(), Vec::<String>::new());
    let message = status["message"].as_str().unwrap();
    let url = format!("http://127.0.0.1:{}/v1/nodes/node42/bundle", nginx.port);
    assert!(
        message.starts_with(&format!(
            "time budget of 2 s ran out while verifying and extracting the bundle from {url}; applied cached generation 1"
        )),
        "{message}"
    );
    assert!(!err.contains("unreachable") && !err.contains("gave up"), "{err}");
    let first = &outcomes(&status)[0];
    assert_eq!((first["result"].as_str(), first["kind"].as_str()), (Some("refused"), Some("budget")), "{status}");
    // Without a cache: onfail, with the same reason.
    let bare = Node::new();
    let (code, err, status) =
        bare.boot_env(&format!("{cmd} rd.stateless.timeout=2"), false, &[(FAULT, "sleep=2500@server")]);
    assert_eq!(code, 10, "{err}");
    let message = status["message"].as_str().unwrap();
    assert!(message.starts_with("no bundle applied: time budget of 2 s ran out while verifying"), "{message}");
    assert_eq!(bare.read("etc/motd"), None);
}

#[test]
fn the_budget_running_out_mid_download_is_not_called_unreachable() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("usr/lib/big", &incompressible(4_000_000, 3))], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let slow = Proxy::throttled(nginx.port, 1_000_000);
    let node = Node::new();
    let (code, err, status) = node.boot(&format!(
        "rd.stateless.server=http://127.0.0.1:{} {NODE} {} rd.stateless.timeout=2",
        slow.port,
        key_arg(&site)
    ));
    assert_eq!(code, 10, "{err}");
    let message = status["message"].as_str().unwrap();
    let url = format!("http://127.0.0.1:{}/v1/nodes/node42/bundle", slow.port);
    let want = format!(
        "no bundle applied: time budget of 2 s ran out while downloading and extracting the bundle from {url} ("
    );
    assert!(message.starts_with(&want), "{message}");
    assert!(message.ends_with(" bytes received); cache empty; onfail=emergency"), "{message}");
    assert!(!message.contains("unreachable"), "{message}");
    assert_eq!(outcomes(&status)[0]["kind"], "budget", "{status}");
    assert_eq!(node.staging_dirs(), Vec::<String>::new());
}

#[test]
fn planted_links_and_fifos_in_the_run_dir_are_not_followed() {
    use std::os::unix::fs::symlink;
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"gen1\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let cmd = format!("rd.stateless.server=http://127.0.0.1:{} {NODE} {}", nginx.port, key_arg(&site));
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    for plant in ["symlink", "fifo"] {
        let node = Node::new();
        std::fs::write(&victim, "precious\n").unwrap();
        let run = node.dir.path().join("run");
        let targets = [run.join("download.bundle"), run.join("status.json")];
        for t in &targets {
            match plant {
                "symlink" => symlink(&victim, t).unwrap(),
                _ => {
                    let ok = std::process::Command::new("mkfifo").arg(t).status().unwrap().success();
                    assert!(ok, "mkfifo {}", t.display());
                }
            }
        }
        // Not Node::boot, which removes status.json first.
        let started = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stateless-loader"))
            .args(["--cmdline", &cmd, "--sysroot"])
            .arg(node.sysroot())
            .arg("--run-dir")
            .arg(&run)
            .arg("--cache-dir")
            .arg(node.dir.path().join("cache"))
            .env("STATELESS_LOG_STDERR", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{plant}: {err}");
        assert!(started.elapsed() < Duration::from_secs(10), "{plant}: {:?}", started.elapsed());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n", "{plant}: followed");
        assert_eq!(node.read("etc/motd").as_deref(), Some("gen1\n"));
        let md = std::fs::symlink_metadata(run.join("status.json")).unwrap();
        assert!(md.file_type().is_file(), "{plant}: status.json is {:?}", md.file_type());
        let status: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("status.json")).unwrap()).unwrap();
        assert_eq!(status["source"], "server", "{plant}");
        // The cached copy is the bundle, not whatever the plant pointed at.
        assert!(node.dir.path().join("cache/current.bundle").exists(), "{plant}");
        assert!(!run.join("download.bundle").exists(), "{plant}");
        let leftovers: Vec<_> = std::fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".status.json"))
            .collect();
        assert_eq!(leftovers, Vec::<String>::new(), "{plant}");
    }
}

#[test]
fn a_missing_key_file_is_reported_once_before_the_network() {
    let stall = Proxy::stalling();
    let node = Node::new();
    let missing = node.dir.path().join("no-such.key");
    let started = Instant::now();
    let (code, err, status) = node.boot(&format!(
        "rd.stateless.server=http://127.0.0.1:{} {NODE} rd.stateless.key=file:{} rd.stateless.timeout=5",
        stall.port,
        missing.display()
    ));
    assert!(started.elapsed() < Duration::from_secs(2), "waited for the network: {:?}", started.elapsed());
    assert_eq!(code, 10, "{err}");
    assert_eq!(stall.connections.load(std::sync::atomic::Ordering::Relaxed), 0, "the network was used");
    let want = format!("no bundle applied: key file {} does not exist; onfail=emergency", missing.display());
    assert_eq!(status["message"], want.as_str(), "{status}");
    assert_eq!(err.matches(&missing.display().to_string()).count(), 1, "{err}");
    // A directory where the key file should be.
    std::fs::create_dir(&missing).unwrap();
    let (code, err, _) = node.boot(&format!(
        "rd.stateless.server=http://127.0.0.1:{} {NODE} rd.stateless.key=file:{}",
        stall.port,
        missing.display()
    ));
    assert_eq!(code, 10, "{err}");
    assert!(err.contains(&format!("key file {} is not a regular file", missing.display())), "{err}");
}

#[test]
fn the_console_says_each_thing_once_and_at_the_right_level() {
    let site = Site::new();
    let good = site.publish("v1/nodes/node42/bundle", 5, node_scope(), &[("etc/motd", b"v5\n")], true);
    let digest = stateless_bundle::BundleReader::new(&good[..]).unwrap().raw_header().digest_hex();
    let nginx =
        Nginx::start(&site.www(), None, &format!("if ($http_if_none_match = '\"{digest}\"') {{ return 304; }}"));
    let node = Node::new();
    let cmd = format!("rd.stateless.server=http://127.0.0.1:{} {NODE} {}", nginx.port, key_arg(&site));
    assert_eq!(node.boot(&cmd).0, 0);
    // 304: the normal case, an info line, not a warning.
    let (code, err, status) = node.boot(&cmd);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-current");
    assert!(!err.contains("warning"), "{err}");
    assert!(err.contains("says the cached bundle is current"), "{err}");
    assert_eq!(status["warnings"], serde_json::json!([]), "{status}");
    assert_eq!(outcomes(&status)[0]["result"], "not-modified", "{status}");
    // A refused bundle: one warning, then the final line.
    let mut tampered = good.clone();
    tampered[400] ^= 1;
    site.put("v1/nodes/node42/bundle", &tampered);
    let bare = Node::new();
    let (code, err, _) = bare.boot(&cmd);
    assert_eq!(code, 10, "{err}");
    assert_eq!(err.matches("authentication failed").count(), 2, "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("warning:") && l.contains("refused")).count(), 1, "{err}");
}

#[test]
fn status_json_records_the_refusal_kind_of_each_attempt() {
    let site = Site::new();
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let cmd =
        format!("rd.stateless.server=http://127.0.0.1:{} {NODE} {} rd.stateless.timeout=3", nginx.port, key_arg(&site));
    site.publish("v1/nodes/node42/bundle", 5, node_scope(), &[("etc/motd", b"v5\n")], true);
    assert_eq!(node.boot(&cmd).0, 0);
    let good = site.make(6, node_scope(), &[("etc/motd", b"v6\n")], true);
    let mut tampered = good.clone();
    tampered[400] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("authentication", tampered),
        // Shorter than its header says: refused from the Content-Length.
        ("size", good[..good.len() - 40].to_vec()),
        ("rollback", site.make(4, node_scope(), &[("etc/motd", b"v4\n")], true)),
        ("scope", site.make(7, Scope::Node("node43".into()), &[("etc/motd", b"x\n")], true)),
        ("downgrade", site.make(8, node_scope(), &[("etc/motd", b"x\n")], false)),
        ("key", Site::new().make(9, node_scope(), &[("etc/motd", b"x\n")], true)),
        ("not-a-bundle", b"<html>not a bundle</html>".repeat(40)),
    ];
    for (kind, bytes) in cases {
        site.put("v1/nodes/node42/bundle", &bytes);
        node.fresh_sysroot();
        let (code, err, status) = node.boot(&cmd);
        assert_eq!(code, 0, "{kind}: {err}");
        let all = outcomes(&status);
        assert_eq!(all[0]["kind"], kind, "{status}");
        assert_eq!(all[0]["result"], "refused", "{kind}: {status}");
        assert_eq!(all[0]["source"], "server", "{kind}: {status}");
        assert!(all[0]["from"].as_str().unwrap().ends_with("/v1/nodes/node42/bundle"), "{kind}: {status}");
        assert_eq!(all[1]["source"], "cache-current", "{kind}: {status}");
        assert_eq!(all[1]["result"], "applied", "{kind}: {status}");
        assert!(all[1].get("kind").is_none(), "{kind}: {status}");
    }
}

#[test]
fn a_panic_outside_any_source_still_ends_with_status_json_and_onfail() {
    let site = Site::new();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &[("etc/motd", b"x\n")], true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let cmd = format!(
        "rd.stateless.server=http://127.0.0.1:{} {NODE} {} rd.stateless.onfail=continue",
        nginx.port,
        key_arg(&site)
    );
    // Caught at the pipeline's outer boundary: the onfail exit status.
    let (code, err, status) = node.boot_env(&cmd, true, &[(FAULT, "panic@pipeline")]);
    assert_eq!(code, 11, "{err}");
    assert_eq!(status["result"], "failed", "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(message.starts_with("no bundle applied: internal error (fault injected by"), "{message}");
    assert!(message.ends_with("; onfail=continue"), "{message}");
    assert_eq!(err.lines().filter(|l| l.contains("no bundle applied")).count(), 1, "{err}");
    // Not caught at all (a panic while unwinding aborts): the hook has
    // already written status.json.
    let (code, err, status) = node.boot_env(&cmd, true, &[(FAULT, "abort@pipeline")]);
    assert_eq!(code, -1, "killed by SIGABRT: {err}");
    assert_eq!(status["result"], "failed", "{status}");
    assert_eq!(status["onfail"], "continue", "{status}");
    let message = status["message"].as_str().unwrap();
    // (The last panic's words: here the one in the destructor.)
    assert!(message.starts_with("no bundle applied: the loader crashed: "), "{message}");
    assert!(err.contains("stateless: error: internal error: fault injected by"), "{err}");
}

#[test]
fn a_bundle_slow_to_extract_is_cut_at_the_deadline() {
    // No fault injected: 90,000 small files (within the entry limit) take
    // seconds to extract; with a 1 s budget the bundle is refused, and
    // nothing is left.
    let site = Site::new();
    let files: Vec<(String, Vec<u8>)> = (0..90_000).map(|i| (format!("d{}/f{i}", i % 300), vec![b'x'; 10])).collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
    site.publish("v1/nodes/node42/bundle", 1, node_scope(), &refs, true);
    let nginx = Nginx::start(&site.www(), None, "");
    let node = Node::new();
    let before = node.tree_digest();
    let started = Instant::now();
    let (code, err, status) = node.boot(&format!(
        "rd.stateless.server=http://127.0.0.1:{} {NODE} {} rd.stateless.timeout=1",
        nginx.port,
        key_arg(&site)
    ));
    let took = started.elapsed();
    assert_eq!(code, 10, "{err}");
    // Bounded by what the bundle code decodes ahead of extraction (16 MiB)
    // until it reads again, or, with its cancellation flag, by one entry:
    // seconds at most on a loaded test machine, not the whole extraction.
    assert!(took < Duration::from_secs(20), "ran {took:?} past a 1 s budget");
    let message = status["message"].as_str().unwrap();
    let url = format!("http://127.0.0.1:{}/v1/nodes/node42/bundle", nginx.port);
    assert!(message.starts_with("no bundle applied: time budget of 1 s ran out while "), "{message}");
    assert!(message.contains(&format!(" the bundle from {url}")), "{message}");
    assert!(!message.contains("unreachable"), "{message}");
    assert_eq!(outcomes(&status)[0]["kind"], "budget", "{status}");
    assert_eq!(node.staging_dirs(), Vec::<String>::new());
    assert_eq!(node.tree_digest(), before, "the root changed");
}

#[test]
fn a_malformed_command_line_still_writes_status_json() {
    let node = Node::new();
    let (code, err, status) = node.boot("rd.stateless.timeout=abc rd.stateless.node=node42");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("reading the kernel command line: rd.stateless.timeout=abc: not a number of seconds"),
        "{err}"
    );
    assert_eq!(status["result"], "failed", "{status}");
    assert_eq!(
        status["message"],
        "no bundle applied: reading the kernel command line: rd.stateless.timeout=abc: not a number of seconds; onfail=emergency"
    );
}
