//! `stateless-node persist`: on a running node, push the state worth keeping
//! back to the config server.
//!
//! The bundle starts from the node's current bundle (fetched from the
//! server and opened with the node's key, unless `--only-paths`), lays the
//! persisted paths of the running system over it (a path that no longer
//! exists becomes a deletion), and is sealed with the node's key, scoped to
//! the node, with the next generation. It is PUT to
//! `{server}/v1/nodes/{node}/bundle` with the push proof of
//! `stateless_server::push_auth`. Settings come from flags, else the config file
//! (`/etc/stateless/persist.conf`), else the loader's status file.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use stateless_bundle::{BundleReader, Limits, OpenOptions, PackOptions, RelPath, Scope};
use stateless_keys::read_key_file;
use stateless_server::push_auth::PushSigner;

use crate::cli::PersistArgs;

/// The settings `persist` needs, merged from flags, config and status.
#[derive(Debug, Default)]
pub(crate) struct Settings {
    pub(crate) server: Option<String>,
    pub(crate) node: Option<String>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) ca: Option<PathBuf>,
    paths: Vec<String>,
    status_generation: Option<u64>,
}

/// Parses the config file: `name = value` lines, `#` comments; `path` may
/// repeat (and may list several paths separated by spaces).
pub(crate) fn read_config(path: &Path, s: &mut Settings) -> anyhow::Result<()> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!("{}:{}: expected name = value", path.display(), i + 1);
        };
        let v = v.trim().to_owned();
        match k.trim() {
            "server" => s.server = Some(v),
            "node" => s.node = Some(v),
            "key" => s.key = Some(PathBuf::from(v)),
            "ca" => s.ca = Some(PathBuf::from(v)),
            "path" | "paths" => s.paths.extend(v.split_whitespace().map(str::to_owned)),
            other => bail!("{}:{}: unknown setting {other:?}", path.display(), i + 1),
        }
    }
    Ok(())
}

fn read_status(path: &Path, s: &mut Settings) {
    let Some(v) = fs::read(path).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()) else {
        return;
    };
    if s.server.is_none() {
        // The loader records the URL the bundle came from; the base is what
        // precedes the protocol path.
        s.server = v.get("server").and_then(|x| x.as_str()).map(|u| match u.find("/v1/") {
            Some(i) => u.get(..i).unwrap_or(u).to_owned(),
            None => u.to_owned(),
        });
    }
    if s.node.is_none() {
        s.node = v.get("node").and_then(|x| x.as_str()).map(str::to_owned);
    }
    s.status_generation = v.get("generation").and_then(|x| x.as_u64());
}

/// What `persist` did; its `Display` is the line printed on success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `--print-public-key`: the push public key, hex.
    PublicKey(String),
    /// `--output`: the bundle was written to a file.
    Written { path: PathBuf, generation: u64, digest: String },
    /// The bundle was pushed; the server's status and one-line answer.
    Pushed { generation: u64, digest: String, status: u16, message: String },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::PublicKey(hex) => f.write_str(hex),
            Outcome::Written { path, generation, digest } => {
                write!(f, "wrote {} (generation {generation}, digest {}…)", path.display(), short(digest))
            }
            Outcome::Pushed { generation, digest, status, message } => {
                write!(f, "pushed generation {generation} (digest {}…): HTTP {status} {message}", short(digest))
            }
        }
    }
}

/// Builds the bundle of the persisted paths and pushes it (or writes it,
/// or only prints the push public key).
pub fn run(a: &PersistArgs) -> anyhow::Result<Outcome> {
    let mut s = Settings::default();
    read_config(&a.config, &mut s)?;
    // Flags win over the config file, which wins over the status file.
    s.server = a.server.clone().or(s.server);
    s.node = a.node.clone().or(s.node);
    s.key = a.key.clone().or(s.key);
    s.ca = a.ca.clone().or(s.ca);
    read_status(&a.status, &mut s);
    s.paths.extend(a.paths.iter().cloned());

    let node = s.node.clone().context("no node id: give --node or set node = in the config file")?;
    stateless_server::check_name(&node)?;
    let key_path = s.key.clone().context("no key: give --key or set key = in the config file")?;
    let key = read_key_file(&key_path).context("reading the node's key file")?;
    let signer = PushSigner::new(&key, &node).map_err(|e| anyhow::anyhow!("deriving the push key: {e}"))?;
    if a.print_public_key {
        return Ok(Outcome::PublicKey(signer.public_key_hex()));
    }
    let server = s.server.clone().map(|u| u.trim_end_matches('/').to_owned());
    let agent = server.as_deref().map(|u| agent(u, s.ca.as_deref())).transpose()?;
    let url = server.as_deref().map(|u| format!("{u}/v1/nodes/{node}/bundle"));
    if s.paths.is_empty() {
        bail!("nothing to persist: list paths as arguments or as path = in the config file");
    }

    let work =
        tempfile::Builder::new().prefix(".stateless-node-persist").tempdir().context("creating a work directory")?;
    let tree = work.path().join("tree");
    fs::create_dir(&tree).context("creating the staging tree")?;
    let owners = rustix::process::geteuid().is_root();
    // The node's current bundle: its generation, and (unless --only-paths)
    // its contents as the base the persisted paths are laid over.
    let mut current: Option<u64> = None;
    if let (Some(agent), Some(url)) = (&agent, &url) {
        let base = work.path().join("current.bundle");
        if fetch(agent, url, &base, a.only_paths).with_context(|| format!("fetching {url}"))? {
            let f = File::open(&base).context("opening the fetched bundle")?;
            let reader = BundleReader::new(BufReader::new(f)).context("reading the current bundle")?;
            current = Some(reader.raw_header().unverified().generation);
            if !a.only_paths {
                let fs_tree = work.path().join("base");
                fs::create_dir(&fs_tree).context("creating the staging tree")?;
                let b = reader.authenticate(Some(&key), &Limits::default()).context("the current bundle")?;
                b.extract(OpenOptions { dest: Some(&fs_tree), owners, threaded: false })
                    .context("opening the current bundle")?;
                fs::remove_dir(&tree).context("replacing the staging tree")?;
                fs::rename(&fs_tree, &tree).context("replacing the staging tree")?;
            }
        }
    }
    let mut deletions = Vec::new();
    for p in &s.paths {
        let rel =
            RelPath::parse(p.trim_start_matches('/').as_bytes(), 4096).map_err(|e| anyhow::anyhow!("path {p}: {e}"))?;
        let src = a.root.join(rel.as_path());
        let dst = tree.join(rel.as_path());
        remove_any(&dst).with_context(|| format!("replacing {p} in the staging tree"))?;
        if src.symlink_metadata().is_err() {
            // Gone on the node: the pushed bundle deletes it.
            deletions.push(rel);
            continue;
        }
        make_parents(&a.root, &tree, &rel, owners).with_context(|| format!("copying the parents of {p}"))?;
        copy_tree(&src, &dst, owners).with_context(|| format!("copying {}", src.display()))?;
    }
    let generation = match a.generation {
        Some(g) => g,
        None => current
            .into_iter()
            .chain(s.status_generation)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .context("generation overflow")?,
    };
    let out_path = work.path().join("push.bundle");
    let mut out = File::create(&out_path).context("creating the bundle")?;
    let opts = PackOptions {
        key: Some(&key),
        generation,
        created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
        expires: None,
        scope: Scope::Node(node.clone()),
        level: stateless_bundle::DEFAULT_LEVEL,
        threads: 0,
        deletions,
        limits: Limits::default(),
    };
    let summary = stateless_bundle::pack(&tree, &mut out, &opts).context("packing the persisted paths")?;
    out.sync_all().context("writing the bundle")?;
    drop(out);
    if let Some(dest) = &a.output {
        fs::copy(&out_path, dest).with_context(|| format!("writing {}", dest.display()))?;
        return Ok(Outcome::Written { path: dest.clone(), generation, digest: summary.digest });
    }
    let (Some(agent), Some(url)) = (agent, url) else {
        bail!("no server: give --server, set server = in the config file, or use --output");
    };
    let (status, message) = push(&agent, &url, &signer, &out_path).with_context(|| format!("pushing to {url}"))?;
    Ok(Outcome::Pushed { generation, digest: summary.digest, status, message })
}

fn short(d: &str) -> &str {
    d.get(..16).unwrap_or(d)
}

/// The HTTP client for `url`. Redirects are not followed: a push proof
/// names the path it was made for, and a redirect could move a push or a
/// fetch from https to plain HTTP; a 3xx answer is an error instead.
pub(crate) fn agent(url: &str, ca: Option<&Path>) -> anyhow::Result<ureq::Agent> {
    let mut b = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(60))
        .timeout_write(Duration::from_secs(60))
        .redirects(0)
        .user_agent(concat!("stateless-node/", env!("CARGO_PKG_VERSION")));
    // The scheme is judged on the parsed URL, so `HTTPS://` is https.
    match parse_server_url(url)?.scheme() {
        "https" => {
            let ca = ca.context("an https server needs its CA: give --ca or set ca = in the config file")?;
            b = b.tls_connector(Arc::new(stateless_tls::Connector::new(Arc::new(tls_config(ca)?))));
        }
        "http" => {}
        _ => bail!("server URL must start with http:// or https://: {url}"),
    }
    Ok(b.build())
}

fn parse_server_url(url: &str) -> anyhow::Result<url::Url> {
    let u = url::Url::parse(url).with_context(|| format!("server URL {url} is not a URL"))?;
    if u.host_str().is_none() || !u.username().is_empty() || u.password().is_some() {
        bail!("server URL must be http(s)://HOST[:PORT][/PATH] without credentials: {url}");
    }
    Ok(u)
}

/// An error for a 3xx answer, which `agent` does not follow.
fn refuse_redirect(r: &ureq::Response) -> anyhow::Result<()> {
    let status = r.status();
    if (300..400).contains(&status) {
        let to = r.header("Location").unwrap_or("nowhere");
        bail!("HTTP {status}: the server redirects to {to}; give that server URL instead (redirects are not followed)");
    }
    Ok(())
}

fn tls_config(ca: &Path) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("reading CA file {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        bail!("no usable certificate in {}", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// GETs the node's current bundle into `dest` (only its header when
/// `header_only`). `false` when the server has none.
fn fetch(agent: &ureq::Agent, url: &str, dest: &Path, header_only: bool) -> anyhow::Result<bool> {
    let mut req = agent.get(url);
    if header_only {
        req = req.set("Range", &format!("bytes=0-{}", stateless_bundle::header::HEADER_LEN - 1));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(404, _)) => return Ok(false),
        Err(ureq::Error::Status(code, r)) => bail!("HTTP {code}: {}", first_line(r)),
        Err(e) => return Err(e.into()),
    };
    refuse_redirect(&resp)?;
    let mut f = File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let limit = Limits::default().max_payload + stateless_bundle::header::HEADER_LEN as u64;
    let n = io::copy(&mut resp.into_reader().take(limit + 1), &mut f).context("downloading")?;
    if n > limit {
        bail!("the current bundle is larger than {limit} bytes");
    }
    Ok(true)
}

pub(crate) fn first_line(r: ureq::Response) -> String {
    let mut s = String::new();
    let _ = r.into_reader().take(4096).read_to_string(&mut s);
    s.lines().next().unwrap_or("").trim().to_owned()
}

/// PUTs the bundle with the push proof; returns the status and the
/// server's one-line answer.
fn push(agent: &ureq::Agent, url: &str, signer: &PushSigner, bundle: &Path) -> anyhow::Result<(u16, String)> {
    let mut f = File::open(bundle).context("opening the bundle")?;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).context("hashing the bundle")?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
        len += n as u64;
    }
    let sha: [u8; 32] = hasher.finalize().into();
    f.seek(SeekFrom::Start(0)).context("rewinding the bundle")?;
    let path = url_path(url)?;
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let auth = signer.authorization("PUT", &path, ts, &sha, len);
    let resp = agent
        .put(url)
        .set("Authorization", &auth)
        .set("Content-Type", "application/octet-stream")
        .set("Content-Length", &len.to_string())
        .send(f);
    match resp {
        Ok(r) => {
            refuse_redirect(&r)?;
            let status = r.status();
            Ok((status, first_line(r)))
        }
        Err(ureq::Error::Status(code, r)) => bail!("HTTP {code}: {}", first_line(r)),
        Err(e) => Err(e.into()),
    }
}

/// The path part of an http(s) URL, with its query (what the server sees
/// and verifies).
pub(crate) fn url_path(url: &str) -> anyhow::Result<String> {
    let u = parse_server_url(url)?;
    Ok(match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_owned(),
    })
}

fn remove_any(p: &Path) -> io::Result<()> {
    match p.symlink_metadata() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
    }
}

/// Creates the parents of `rel` in `tree` with the modes (and owners) they
/// have under `root`, so applying the bundle does not change them.
fn make_parents(root: &Path, tree: &Path, rel: &RelPath, owners: bool) -> io::Result<()> {
    let Some(parent) = rel.as_path().parent() else { return Ok(()) };
    let mut cur = PathBuf::new();
    for c in parent.components() {
        cur.push(c);
        let dst = tree.join(&cur);
        if dst.symlink_metadata().is_ok() {
            continue;
        }
        let meta = fs::metadata(root.join(&cur))?;
        fs::create_dir(&dst)?;
        copy_meta(&dst, &meta, owners)?;
    }
    Ok(())
}

fn copy_meta(dst: &Path, meta: &fs::Metadata, owners: bool) -> io::Result<()> {
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    if owners {
        std::os::unix::fs::chown(dst, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

/// Copies a file, symlink or directory tree; other file types are skipped
/// with a warning (bundles cannot carry them).
fn copy_tree(src: &Path, dst: &Path, owners: bool) -> io::Result<()> {
    let meta = src.symlink_metadata()?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
        if owners {
            std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
        }
    } else if ft.is_dir() {
        fs::create_dir(dst)?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()), owners)?;
        }
        copy_meta(dst, &meta, owners)?;
    } else if ft.is_file() {
        let mut from = File::open(src)?;
        let mut to = File::create(dst)?;
        io::copy(&mut from, &mut to)?;
        to.flush()?;
        copy_meta(dst, &meta, owners)?;
    } else {
        log::warn!("{}: not a file, directory or symlink; skipped", src.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stateless_bundle::Key;

    /// The scheme is judged on the parsed URL: `HTTPS://` needs a CA like
    /// `https://`, and other schemes are refused.
    #[test]
    fn scheme_case_does_not_skip_tls() {
        for url in ["HTTPS://h/v1", "Https://h:8443/v1", "https://h/v1"] {
            let err = agent(url, None).unwrap_err().to_string();
            assert!(err.contains("an https server needs its CA"), "{url}: {err}");
        }
        assert!(agent("HTTP://h/v1", None).is_ok());
        for url in ["ftp://h/v1", "h/v1", "file:///etc/passwd"] {
            assert!(agent(url, None).is_err(), "{url}");
        }
    }

    #[test]
    fn url_paths_and_config() {
        assert_eq!(url_path("http://127.0.0.1:8080/v1/nodes/n/bundle").unwrap(), "/v1/nodes/n/bundle");
        assert_eq!(url_path("https://h/base/v1/nodes/n/bundle").unwrap(), "/base/v1/nodes/n/bundle");
        assert_eq!(url_path("HTTPS://h/v1/nodes/n/bundle?x=1").unwrap(), "/v1/nodes/n/bundle?x=1");
        assert!(url_path("https://user:pw@h/v1").is_err());
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("persist.conf");
        fs::write(&conf, "# comment\nserver = http://x:1\nnode = n1\nkey = /k\npath = /etc/a /etc/b\npath = /var/c\n")
            .unwrap();
        let mut s = Settings::default();
        read_config(&conf, &mut s).unwrap();
        assert_eq!(s.server.as_deref(), Some("http://x:1"));
        assert_eq!(s.paths, ["/etc/a", "/etc/b", "/var/c"]);
        fs::write(&conf, "bogus = 1\n").unwrap();
        assert!(read_config(&conf, &mut Settings::default()).is_err());
        let status = dir.path().join("status.json");
        fs::write(&status, r#"{"server":"https://h:8443/v1/nodes/n1/bundle","node":"n1","generation":7}"#).unwrap();
        let mut s = Settings::default();
        read_status(&status, &mut s);
        assert_eq!(s.server.as_deref(), Some("https://h:8443"));
        assert_eq!((s.node.as_deref(), s.status_generation), (Some("n1"), Some(7)));
    }

    #[test]
    fn key_is_only_used_through_the_signer() {
        // The signer is derived, so printing the public key never shows the key.
        let key = Key::from_bytes([3; 32]);
        let p = PushSigner::new(&key, "n1").unwrap().public_key_hex();
        assert!(!p.contains(&stateless_bundle::key::hex_encode(key.as_bytes())));
    }
}
