//! Fleet trust end to end (issue 13): the loader binary against nginx on
//! 127.0.0.1 with publisher signatures required, the same checks on cached
//! bundles, per-node keys, key sources that cannot outvote each other, and
//! `rd.stateless.max-age`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stateless_bundle::{BundleReader, Key, Limits, PackOptions, Scope, SigningKey};
use stateless_keys::derive::{Target, derive};
use stateless_loader::cache::{Cache, SlotMeta};
use support::{Nginx, Node, Site, stick};

const REL: &str = "v1/nodes/node42/bundle";
const NODE: &str = "rd.stateless.node=node42 rd.stateless.timeout=3";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// What a bundle is made of.
struct Make<'a> {
    generation: u64,
    scope: Scope,
    motd: &'a str,
    key: Option<&'a Key>,
    signer: Option<&'a SigningKey>,
    created: i64,
    expires: Option<i64>,
}

impl<'a> Make<'a> {
    fn new(generation: u64, key: &'a Key, signer: Option<&'a SigningKey>) -> Make<'a> {
        Make {
            generation,
            scope: Scope::Node("node42".into()),
            motd: "signed\n",
            key: Some(key),
            signer,
            created: now(),
            expires: None,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let tree = tempfile::tempdir().unwrap();
        fs::create_dir_all(tree.path().join("etc")).unwrap();
        fs::write(tree.path().join("etc/motd"), self.motd).unwrap();
        let opts = PackOptions {
            key: self.key,
            generation: self.generation,
            created: self.created,
            expires: self.expires,
            scope: self.scope.clone(),
            level: 3,
            threads: 0,
            deletions: vec![],
            limits: Limits::default(),
        };
        let mut out = std::io::Cursor::new(Vec::new());
        match self.signer {
            Some(sk) => stateless_bundle::pack_signed(tree.path(), &mut out, &opts, sk).unwrap(),
            None => stateless_bundle::pack(tree.path(), &mut out, &opts).unwrap(),
        };
        out.into_inner()
    }
}

/// A node's boot image: key directory, sealed directory, publisher
/// directory, and the flags that point the loader at them.
struct Image {
    keys: PathBuf,
    sealed: PathBuf,
    publishers: PathBuf,
}

impl Image {
    fn new(node: &Node, keys: &[&Key], publishers: &[&SigningKey]) -> Image {
        let img = Image {
            keys: node.dir.path().join("img/keys"),
            sealed: node.dir.path().join("img/tpm"),
            publishers: node.dir.path().join("img/publishers"),
        };
        for d in [&img.keys, &img.sealed, &img.publishers] {
            fs::create_dir_all(d).unwrap();
        }
        for k in keys {
            stateless_keys::write_key_file(&img.keys.join(format!("{}.key", k.id())), k, false).unwrap();
        }
        for p in publishers {
            img.add_publisher(p);
        }
        img
    }

    fn pub_path(&self, p: &SigningKey) -> PathBuf {
        self.publishers.join(format!("{}.pub", p.signer_id()))
    }

    fn add_publisher(&self, p: &SigningKey) {
        stateless_keys::write_public_key_file(&self.pub_path(p), &p.public_key(), true).unwrap();
    }
}

/// Runs the loader against `node` with `img`; `cache` false leaves the
/// cache out. Returns (exit code, stderr, status.json).
fn boot(
    node: &Node,
    img: &Image,
    cmdline: &str,
    cache: bool,
    extra: &[&dyn AsRef<OsStr>],
) -> (i32, String, serde_json::Value) {
    let run = node.dir.path().join("run");
    let _ = fs::remove_file(run.join("status.json"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stateless-loader"));
    cmd.arg("--cmdline").arg(cmdline).arg("--sysroot").arg(node.sysroot()).arg("--run-dir").arg(&run);
    cmd.arg("--key-dir").arg(&img.keys).arg("--sealed-dir").arg(&img.sealed);
    cmd.arg("--publisher-dir").arg(&img.publishers);
    if cache {
        cmd.arg("--cache-dir").arg(node.dir.path().join("cache"));
    }
    for e in extra {
        cmd.arg(e);
    }
    let out = cmd.env("STATELESS_LOG_STDERR", "1").output().unwrap();
    let status = fs::read(run.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned(), status)
}

fn serve(site: &Site) -> (Nginx, String) {
    let nginx = Nginx::start(&site.www(), None, "");
    let server = format!("rd.stateless.server=http://127.0.0.1:{}", nginx.port);
    (nginx, server)
}

/// A server URL nothing listens on, and a short budget: an offline boot.
/// (Put it after [`NODE`], whose timeout it overrides.)
fn offline() -> String {
    format!("rd.stateless.server=http://127.0.0.1:{} rd.stateless.timeout=1", support::free_port())
}

fn unsigned_line() -> &'static str {
    "bundle is not signed; a publisher signature is required"
}

fn foreign_line(found: &SigningKey, expected: &SigningKey) -> String {
    format!("bundle is signed by publisher {}, expected {}", found.signer_id().short(), expected.signer_id().short())
}

/// The `kind` of each refused source in `status.json`'s `outcomes`, as
/// `source: kind`.
fn refused_kinds(status: &serde_json::Value) -> Vec<String> {
    status["outcomes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["result"] == "refused")
        .map(|o| format!("{}: {}", o["source"].as_str().unwrap(), o["kind"].as_str().unwrap()))
        .collect()
}

/// Writes `bytes` into the cache as a loader would have stored it.
fn plant(cache_dir: &Path, bytes: &[u8]) {
    let raw = BundleReader::new(bytes).unwrap().raw_header().clone();
    let tmp = cache_dir.join("planted.bundle");
    fs::write(&tmp, bytes).unwrap();
    let h = raw.unverified();
    let meta = SlotMeta {
        generation: h.generation,
        digest: raw.digest_hex(),
        fetched: now(),
        server: "http://planted.invalid".into(),
        key_id: h.key_id.to_string(),
        size: bytes.len() as u64,
        highest_generation: h.generation,
    };
    Cache::new(cache_dir).store(&tmp, &meta).unwrap();
    fs::remove_file(tmp).unwrap();
}

#[test]
fn server_bundles_need_a_trusted_signature() {
    let site = Site::new();
    let (_nginx, server) = serve(&site);
    let (publisher, stranger) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
    let node = Node::new();
    // The publisher key embedded in the boot image is the default.
    let img = Image::new(&node, &[&site.key], &[&publisher]);
    let cmdline = format!("{server} {NODE}");

    site.put(REL, &Make::new(1, &site.key, Some(&publisher)).bytes());
    let (code, err, status) = boot(&node, &img, &cmdline, false, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("signed\n"));
    assert_eq!(status["signer"], publisher.signer_id().to_string());
    assert!(err.contains(&format!("signed by {})", publisher.signer_id().short())), "{err}");
    assert!(err.contains(&format!("trust: publishers {}", publisher.signer_id().short())), "{err}");

    // Unsigned, though sealed with the right site key: the stolen-key attack.
    // With the key ladder on, and with rd.stateless.key=none (which allows
    // unencrypted bundles): the signature is checked either way.
    let both: &[&str] = &["", " rd.stateless.key=none rd.stateless.insecure"];
    for (bytes, want, kind, extras) in [
        (
            Make { motd: "forged\n", ..Make::new(2, &site.key, None) }.bytes(),
            unsigned_line().to_owned(),
            "unsigned",
            both,
        ),
        (
            Make { motd: "forged\n", ..Make::new(2, &site.key, Some(&stranger)) }.bytes(),
            foreign_line(&stranger, &publisher),
            "untrusted-signer",
            both,
        ),
        // Unencrypted and unsigned, on a node that allows unencrypted
        // bundles (with a key configured it is a downgrade, refused before).
        (
            Make { motd: "forged\n", key: None, ..Make::new(2, &site.key, None) }.bytes(),
            unsigned_line().to_owned(),
            "unsigned",
            &both[1..],
        ),
    ] {
        site.put(REL, &bytes);
        for extra in extras {
            node.fresh_sysroot();
            let (code, err, status) = boot(&node, &img, &format!("{cmdline}{extra}"), false, &[]);
            assert_eq!(code, 10, "{err}");
            assert!(err.contains("bundle from http://127.0.0.1:"), "{err}");
            assert!(err.contains(&want), "{err}\nwant: {want}");
            assert_eq!(status["result"], "failed");
            assert!(status["message"].as_str().unwrap().contains(&want), "{status}");
            assert_eq!(refused_kinds(&status), [format!("server: {kind}")], "{status}");
            // Refused once: one warning, not one per place that saw it.
            assert_eq!(err.matches(&want).count(), 2, "the warning and the final line: {err}");
        }
        assert_eq!(node.read("etc/motd"), None);
        assert!(node.staging_dirs().is_empty());
    }

    // The same publisher given on the command line instead (inline), with
    // no embedded keys: the stranger's bundle is still refused.
    fs::remove_file(img.pub_path(&publisher)).unwrap();
    site.put(REL, &Make::new(2, &site.key, Some(&stranger)).bytes());
    let inline = format!("ed25519:{}", stateless_bundle::key::hex_encode(&publisher.public_key().to_bytes()));
    let (code, err, _) = boot(&node, &img, &format!("{cmdline} rd.stateless.pubkey={inline}"), false, &[]);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains(&foreign_line(&stranger, &publisher)), "{err}");
    site.put(REL, &Make::new(3, &site.key, Some(&publisher)).bytes());
    let (code, err, _) = boot(&node, &img, &format!("{cmdline} rd.stateless.pubkey={inline}"), false, &[]);
    assert_eq!(code, 0, "{err}");
    // No publisher anywhere: signatures are not required (sites without one).
    site.put(REL, &Make::new(4, &site.key, None).bytes());
    let (code, err, status) = boot(&node, &img, &cmdline, false, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(status["signer"].is_null(), "{status}");
    assert!(err.contains("signatures not required"), "{err}");
}

#[test]
fn an_unreadable_publisher_key_fails_closed() {
    let site = Site::new();
    let (_nginx, server) = serve(&site);
    site.put(REL, &Make::new(1, &site.key, None).bytes());
    let node = Node::new();
    let img = Image::new(&node, &[&site.key], &[]);
    let gone = node.dir.path().join("gone.pub");
    let (code, err, status) =
        boot(&node, &img, &format!("{server} {NODE} rd.stateless.pubkey=file:{}", gone.display()), false, &[]);
    assert_eq!(code, 10, "{err}");
    let want = format!(
        "no bundle applied: reading the publisher keys of rd.stateless.pubkey=: {}: No such file",
        gone.display()
    );
    assert!(status["message"].as_str().unwrap().starts_with(&want), "{status}");
    // Before any network: no source was tried.
    assert_eq!(status["outcomes"], serde_json::json!([]), "{status}");
    assert_eq!(node.read("etc/motd"), None);
    // A broken file among the embedded ones fails the boot too.
    fs::write(img.publishers.join("bad.pub"), "junk\n").unwrap();
    let (code, err, status) = boot(&node, &img, &format!("{server} {NODE}"), false, &[]);
    assert_eq!(code, 10, "{err}");
    let msg = status["message"].as_str().unwrap();
    assert!(msg.contains("reading the publisher keys embedded in") && msg.contains("bad.pub"), "{msg}");
    assert_eq!(node.read("etc/motd"), None);
}

#[test]
fn rotation_accepts_both_until_the_old_key_is_removed() {
    let site = Site::new();
    let (_nginx, server) = serve(&site);
    let (old, new) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
    let node = Node::new();
    let img = Image::new(&node, &[&site.key], &[&old, &new]);
    let cmdline = format!("{server} {NODE}");
    for (generation, signer) in [(1, &old), (2, &new)] {
        site.put(REL, &Make::new(generation, &site.key, Some(signer)).bytes());
        let (code, err, status) = boot(&node, &img, &cmdline, false, &[]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(status["signer"], signer.signer_id().to_string());
    }
    // Step 3 of the rotation: the old key leaves the boot image. A bundle
    // it signed (a replay, or the old key stolen) is refused.
    fs::remove_file(img.pub_path(&old)).unwrap();
    site.put(REL, &Make::new(3, &site.key, Some(&old)).bytes());
    let (code, err, _) = boot(&node, &img, &cmdline, false, &[]);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains(&foreign_line(&old, &new)), "{err}");
    // The same on the command line: two keys listed, then one.
    let listed = |keys: &[&SigningKey]| {
        let files: Vec<String> = keys
            .iter()
            .map(|k| {
                img.add_publisher(k);
                format!("file:{}", img.pub_path(k).display())
            })
            .collect();
        format!("{cmdline} rd.stateless.pubkey={}", files.join(","))
    };
    let (code, err, _) = boot(&node, &img, &listed(&[&old, &new]), false, &[]);
    assert_eq!(code, 0, "{err}");
    let stranger = SigningKey::generate().unwrap();
    site.put(REL, &Make::new(4, &site.key, Some(&stranger)).bytes());
    let (code, err, _) = boot(&node, &img, &listed(&[&old, &new]), false, &[]);
    assert_eq!(code, 10, "{err}");
    let want = format!(
        "bundle is signed by publisher {}, not one of the trusted publishers {}, {}",
        stranger.signer_id().short(),
        old.signer_id().short(),
        new.signer_id().short()
    );
    assert!(err.contains(&want), "{err}");
    site.put(REL, &Make::new(4, &site.key, Some(&old)).bytes());
    let (code, err, _) = boot(&node, &img, &listed(&[&new]), false, &[]);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains(&foreign_line(&old, &new)), "{err}");
}

#[test]
fn cached_bundles_are_checked_like_fetched_ones() {
    let site = Site::new();
    let (old, publisher, stranger) =
        (SigningKey::generate().unwrap(), SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
    let node = Node::new();
    let img = Image::new(&node, &[&site.key], &[&publisher]);
    let cache = node.dir.path().join("cache");
    let cmdline = format!("{NODE} {}", offline());

    // A good signed bundle in the cache boots offline.
    plant(&cache, &Make::new(1, &site.key, Some(&publisher)).bytes());
    let (code, err, status) = boot(&node, &img, &cmdline, true, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-current");
    assert_eq!(status["signer"], publisher.signer_id().to_string());

    // Unsigned, foreign-signed, and signed by a key no longer trusted: each
    // written into the cache as a loader would have (another node's
    // loader, or someone with the site key and the disk).
    for (bytes, want, kind) in [
        (Make::new(2, &site.key, None).bytes(), unsigned_line().to_owned(), "unsigned"),
        (Make::new(2, &site.key, Some(&stranger)).bytes(), foreign_line(&stranger, &publisher), "untrusted-signer"),
        (Make::new(2, &site.key, Some(&old)).bytes(), foreign_line(&old, &publisher), "untrusted-signer"),
    ] {
        let _ = fs::remove_dir_all(&cache);
        fs::create_dir_all(&cache).unwrap();
        plant(&cache, &bytes);
        node.fresh_sysroot();
        let (code, err, status) = boot(&node, &img, &cmdline, true, &[]);
        assert_eq!(code, 10, "{err}");
        assert!(err.contains(&format!("cache-current: {want}")), "{err}\nwant: {want}");
        assert!(status["warnings"].to_string().contains(&want), "{status}");
        assert_eq!(refused_kinds(&status), [format!("cache-current: {kind}")], "{status}");
        assert_eq!(node.read("etc/motd"), None);
    }

    // A signed bundle edited on disk (its payload): the signature covers
    // the payload digest, so the edit is caught whatever the JSON says.
    let _ = fs::remove_dir_all(&cache);
    fs::create_dir_all(&cache).unwrap();
    plant(&cache, &Make { key: None, ..Make::new(1, &site.key, Some(&publisher)) }.bytes());
    let path = cache.join("current.bundle");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    node.fresh_sysroot();
    let (code, err, status) =
        boot(&node, &img, &format!("{cmdline} rd.stateless.key=none rd.stateless.insecure"), true, &[]);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("cache-current: payload digest mismatch: the payload is not the one publisher"), "{err}");
    assert_eq!(refused_kinds(&status), ["cache-current: signature"], "{status}");
    assert_eq!(node.read("etc/motd"), None);
}

#[test]
fn a_node_key_opens_only_its_own_bundles_even_from_a_copied_cache() {
    let site = Site::new();
    let (_nginx, server) = serve(&site);
    let publisher = SigningKey::generate().unwrap();
    let node42_key = derive(&site.key, &Target::Node("node42".into())).unwrap();
    let node43_key = derive(&site.key, &Target::Node("node43".into())).unwrap();
    let mine = Make::new(1, &node42_key, Some(&publisher)).bytes();
    let theirs = Make { scope: Scope::Node("node43".into()), ..Make::new(5, &node43_key, Some(&publisher)) }.bytes();

    // node43 boots its own bundle and caches it.
    let node43 = Node::new();
    let img43 = Image::new(&node43, &[&node43_key], &[&publisher]);
    site.put("v1/nodes/node43/bundle", &theirs);
    let (code, err, _) =
        boot(&node43, &img43, &format!("{server} rd.stateless.node=node43 rd.stateless.timeout=3"), true, &[]);
    assert_eq!(code, 0, "{err}");

    // node42 holds only its own derived key. node43's bundle served under
    // node42's name is refused for want of the key.
    let node42 = Node::new();
    let img42 = Image::new(&node42, &[&node42_key], &[&publisher]);
    site.put(REL, &theirs);
    let (code, err, _) = boot(&node42, &img42, &format!("{server} {NODE}"), false, &[]);
    assert_eq!(code, 10, "{err}");
    let want = format!(
        "bundle needs key {}; key directory {} had {}",
        node43_key.id().short(),
        img42.keys.display(),
        node42_key.id().short()
    );
    assert!(err.contains(&want), "{err}\nwant: {want}");
    site.put(REL, &mine);
    let (code, err, _) = boot(&node42, &img42, &format!("{server} {NODE}"), false, &[]);
    assert_eq!(code, 0, "{err}");

    // node43's cache disk, copied onto node42, does not boot node42.
    let cache42 = node42.dir.path().join("cache");
    for f in ["current.bundle", "current.json"] {
        fs::copy(node43.dir.path().join("cache").join(f), cache42.join(f)).unwrap();
    }
    node42.fresh_sysroot();
    let (code, err, _) = boot(&node42, &img42, &format!("{NODE} {}", offline()), true, &[]);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains(&format!("cache-current: bundle needs key {}", node43_key.id().short())), "{err}");
    // Even a node holding the site key refuses it: the scope is node43's.
    let img_site = Image::new(&node42, &[&site.key, &node43_key], &[&publisher]);
    let (code, err, _) = boot(&node42, &img_site, &format!("{NODE} {}", offline()), true, &[]);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("cache-current: bundle is for node:node43, this is node node42"), "{err}");
    assert_eq!(node42.read("etc/motd"), None);
}

#[test]
fn a_stick_cannot_outvote_the_tpm() {
    use stateless_keys::sealed::Bank;
    use stateless_keys::tpm::Tpm;
    use support::swtpm::Swtpm;

    // The node's own key is sealed in its TPM. An attacker holding the
    // site key seals a bundle for it (no publisher configured here, so the
    // key ladder alone must stop it) and plugs in a stick with the site
    // key: the right key id for that bundle.
    let site = Site::new();
    let (_nginx, server) = serve(&site);
    let node_key = derive(&site.key, &Target::Node("node42".into())).unwrap();
    let node = Node::new();
    let img = Image::new(&node, &[], &[]);
    let swtpm = Swtpm::start();
    {
        let mut tpm = Tpm::open(&swtpm.selector().parse().unwrap()).unwrap();
        let sealed = tpm.seal(&node_key, Bank::Sha256, &[7]).unwrap();
        fs::write(img.sealed.join("node42.sealed"), sealed.to_text()).unwrap();
    }
    let usb = stick(node.dir.path(), "STATELESS", &[&site.key]);
    let flags: [&dyn AsRef<OsStr>; 2] = [&"--usb-device", &usb];
    site.put(REL, &Make { motd: "attacker\n", ..Make::new(9, &site.key, None) }.bytes());
    let tpm = format!("rd.stateless.tpm={}", swtpm.selector());
    for key in ["rd.stateless.key=tpm", "", "rd.stateless.key=auto"] {
        node.fresh_sysroot();
        let (code, err, _) = boot(&node, &img, &format!("{server} {NODE} {tpm} {key}"), false, &flags);
        assert_eq!(code, 10, "{key}: {err}");
        assert!(err.contains(&format!("bundle needs key {}", site.key.id().short())), "{err}");
        assert!(err.contains(&format!("TPM had {}", node_key.id().short())) || err.contains("TPM"), "{err}");
        if key == "rd.stateless.key=tpm" {
            assert!(!err.contains("USB stick"), "{err}");
        } else {
            assert!(err.contains("USB stick STATELESS: not consulted: the boot image holds TPM-sealed keys"), "{err}");
        }
        assert_eq!(node.read("etc/motd"), None);
    }
    // The node's own bundle opens with the TPM, and the console names it.
    site.put(REL, &Make::new(10, &node_key, None).bytes());
    node.fresh_sysroot();
    let (code, err, status) = boot(&node, &img, &format!("{server} {NODE} {tpm}"), false, &flags);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["key_source"], "TPM");
    assert!(err.contains(&format!("(key {} from TPM)", node_key.id().short())), "{err}");
    // A site that wants the stick as a fallback says so, in order.
    site.put(REL, &Make { motd: "from the stick\n", ..Make::new(11, &site.key, None) }.bytes());
    node.fresh_sysroot();
    let (code, err, status) =
        boot(&node, &img, &format!("{server} {NODE} {tpm} rd.stateless.key=tpm,usb"), false, &flags);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["key_source"], "USB stick STATELESS");
    assert!(err.contains(&format!("(key {} from USB stick STATELESS)", site.key.id().short())), "{err}");
    // A stick-only node (nothing in its boot image) still uses auto's stick.
    let bare = Image::new(&node, &[], &[]);
    fs::remove_file(bare.sealed.join("node42.sealed")).unwrap();
    node.fresh_sysroot();
    let (code, err, status) = boot(&node, &bare, &format!("{server} {NODE} {tpm}"), false, &flags);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["key_source"], "USB stick STATELESS");
}

#[test]
fn the_signature_is_checked_before_any_key_is_looked_up() {
    // An unsigned bundle must not make the loader wait for a stick (5 s on
    // a real scan) or unseal the TPM: it is refused from its header.
    let site = Site::new();
    let (_nginx, server) = serve(&site);
    let publisher = SigningKey::generate().unwrap();
    let node = Node::new();
    let img = Image::new(&node, &[], &[&publisher]);
    site.put(REL, &Make::new(1, &site.key, None).bytes());
    let t = Instant::now();
    let (code, err, _) = boot(&node, &img, &format!("{server} {NODE} rd.stateless.key=usb:NOSUCH42"), false, &[]);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains(unsigned_line()), "{err}");
    assert!(!err.contains("waiting"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

#[test]
fn max_age_refuses_old_bundles_from_the_server_and_the_cache() {
    let site = Site::new();
    let (_nginx, server) = serve(&site);
    let publisher = SigningKey::generate().unwrap();
    let node = Node::new();
    let img = Image::new(&node, &[&site.key], &[&publisher]);
    let ten_days_ago = now() - 10 * 86_400;
    let old = Make { created: ten_days_ago, motd: "old\n", ..Make::new(1, &site.key, Some(&publisher)) }.bytes();
    site.put(REL, &old);
    let week = "rd.stateless.max-age=7d";
    let (code, err, status) = boot(&node, &img, &format!("{server} {NODE} {week}"), false, &[]);
    assert_eq!(code, 10, "{err}");
    assert_eq!(refused_kinds(&status), ["server: too-old"], "{status}");
    let created = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(ten_days_ago as u64));
    let want = format!("bundle created {created} is 10days");
    assert!(err.contains(&want), "{err}\nwant: {want}");
    assert!(err.contains("old, over rd.stateless.max-age=7days"), "{err}");
    assert_eq!(node.read("etc/motd"), None);
    // A fresh one is applied (and cached).
    site.put(REL, &Make::new(2, &site.key, Some(&publisher)).bytes());
    let (code, err, _) = boot(&node, &img, &format!("{server} {NODE} {week}"), true, &[]);
    assert_eq!(code, 0, "{err}");

    // The cache: the old bundle, as if stored ten days ago.
    let cache = node.dir.path().join("cache");
    let _ = fs::remove_dir_all(&cache);
    fs::create_dir_all(&cache).unwrap();
    plant(&cache, &old);
    let offline = format!("{NODE} {}", offline());
    node.fresh_sysroot();
    let (code, err, status) = boot(&node, &img, &format!("{offline} {week}"), true, &[]);
    assert_eq!(code, 10, "{err}");
    assert_eq!(refused_kinds(&status), ["cache-current: too-old"], "{status}");
    assert!(err.contains("cache-current: bundle created") && err.contains("over rd.stateless.max-age=7days"), "{err}");
    assert_eq!(node.read("etc/motd"), None);
    // The documented exception for offline boots: a longer limit, or none.
    for exception in ["rd.stateless.max-age-offline=30d", "rd.stateless.max-age-offline=none"] {
        node.fresh_sysroot();
        let (code, err, status) = boot(&node, &img, &format!("{offline} {week} {exception}"), true, &[]);
        assert_eq!(code, 0, "{exception}: {err}");
        assert_eq!(status["source"], "cache-current");
        assert_eq!(node.read("etc/motd").as_deref(), Some("old\n"));
    }
    node.fresh_sysroot();
    let (code, err, _) = boot(&node, &img, &format!("{offline} {week} rd.stateless.max-age-offline=9d"), true, &[]);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("over rd.stateless.max-age-offline=9days"), "{err}");
    // The exception is for the cache only: the server's old bundle is still refused.
    site.put(REL, &old);
    node.fresh_sysroot();
    let (code, err, _) =
        boot(&node, &img, &format!("{server} {NODE} {week} rd.stateless.max-age-offline=none"), false, &[]);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("over rd.stateless.max-age=7days"), "{err}");
}

/// The header's expiry holds for a server's bundle and for the cache's
/// alike; a bundle that has not expired yet is applied.
#[test]
fn expired_bundles_are_refused_from_the_server_and_the_cache() {
    let site = Site::new();
    let (_nginx, server) = serve(&site);
    let publisher = SigningKey::generate().unwrap();
    let node = Node::new();
    let img = Image::new(&node, &[&site.key], &[&publisher]);
    let expired = Make { expires: Some(now() - 3600), motd: "expired\n", ..Make::new(3, &site.key, Some(&publisher)) };
    let expired = expired.bytes();
    site.put(REL, &expired);
    let (code, err, status) = boot(&node, &img, &format!("{server} {NODE}"), false, &[]);
    assert_eq!(code, 10, "{err}");
    assert_eq!(refused_kinds(&status), ["server: expired"], "{status}");
    assert!(err.contains("expired"), "{err}");
    assert_eq!(node.read("etc/motd"), None);

    let valid = Make { expires: Some(now() + 86_400), motd: "valid\n", ..Make::new(4, &site.key, Some(&publisher)) };
    site.put(REL, &valid.bytes());
    let (code, err, _) = boot(&node, &img, &format!("{server} {NODE}"), true, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(node.read("etc/motd").as_deref(), Some("valid\n"));

    // The same expired bundle in the cache is refused too.
    let cache = node.dir.path().join("cache");
    let _ = fs::remove_dir_all(&cache);
    fs::create_dir_all(&cache).unwrap();
    plant(&cache, &expired);
    node.fresh_sysroot();
    let (code, err, status) = boot(&node, &img, &format!("{NODE} {}", offline()), true, &[]);
    assert_eq!(code, 10, "{err}");
    assert_eq!(refused_kinds(&status), ["cache-current: expired"], "{status}");
    assert_eq!(node.read("etc/motd"), None);
}

#[test]
fn an_unsigned_cache_slot_does_not_raise_the_rollback_floor() {
    // Someone with the site key and the cache disk plants an unsigned
    // bundle of a high generation: it must neither boot nor make the
    // node refuse its real, signed bundles as rollbacks.
    let site = Site::new();
    let (_nginx, server) = serve(&site);
    let publisher = SigningKey::generate().unwrap();
    let node = Node::new();
    let img = Image::new(&node, &[&site.key], &[&publisher]);
    plant(&node.dir.path().join("cache"), &Make { motd: "planted\n", ..Make::new(50, &site.key, None) }.bytes());
    site.put(REL, &Make::new(2, &site.key, Some(&publisher)).bytes());
    let (code, err, status) = boot(&node, &img, &format!("{server} {NODE}"), true, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["generation"], 2);
    assert_eq!(node.read("etc/motd").as_deref(), Some("signed\n"));
    assert!(err.contains(unsigned_line()), "the planted slot is named: {err}");
    // Without publishers the same slot is authenticated by the site key
    // alone and does set the floor: the signature is what tells them apart.
    let bare = Node::new();
    let img = Image::new(&bare, &[&site.key], &[]);
    plant(&bare.dir.path().join("cache"), &Make { motd: "planted\n", ..Make::new(50, &site.key, None) }.bytes());
    let (code, err, status) = boot(&bare, &img, &format!("{server} {NODE}"), true, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rollback refused: bundle generation 2 is older than generation 50"), "{err}");
    assert_eq!(status["source"], "cache-current");
}

#[test]
fn a_cached_bundle_signed_by_a_rotated_out_key_is_refused() {
    // The node trusted old and new; it applied and cached an old-signed
    // bundle. Once the old key leaves its boot image, that cache slot is
    // refused on an offline boot, and a new-signed one still boots.
    let site = Site::new();
    let (nginx, server) = serve(&site);
    let (old, new) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
    let node = Node::new();
    let img = Image::new(&node, &[&site.key], &[&old, &new]);
    site.put(REL, &Make { motd: "old-signed\n", ..Make::new(1, &site.key, Some(&old)) }.bytes());
    let (code, err, _) = boot(&node, &img, &format!("{server} {NODE}"), true, &[]);
    assert_eq!(code, 0, "{err}");
    drop(nginx);
    let offline = format!("{NODE} {}", offline());
    node.fresh_sysroot();
    let (code, err, status) = boot(&node, &img, &offline, true, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["source"], "cache-current");

    fs::remove_file(img.pub_path(&old)).unwrap();
    node.fresh_sysroot();
    let (code, err, status) = boot(&node, &img, &offline, true, &[]);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains(&format!("cache-current: {}", foreign_line(&old, &new))), "{err}");
    assert!(status["message"].as_str().unwrap().contains("cache-current refused"), "{status}");
    assert_eq!(node.read("etc/motd"), None);

    // Planted by someone who has the site key but only the old signing key:
    // the previous slot is checked as strictly as the current one.
    let cache = node.dir.path().join("cache");
    plant(&cache, &Make { motd: "new-signed\n", ..Make::new(2, &site.key, Some(&new)) }.bytes());
    plant(&cache, &Make { motd: "old again\n", ..Make::new(3, &site.key, Some(&old)) }.bytes());
    node.fresh_sysroot();
    let (code, err, status) = boot(&node, &img, &offline, true, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("cache-current: {}", foreign_line(&old, &new))), "{err}");
    assert_eq!(status["source"], "cache-previous");
    assert_eq!(status["signer"], new.signer_id().to_string());
    assert_eq!(node.read("etc/motd").as_deref(), Some("new-signed\n"));
}
