//! The boot report: after the pipeline has decided and written
//! `status.json`, the loader adds the capability probe ([`crate::probe`])
//! to it as `capabilities` and posts the whole file to
//! `POST {server}/v1/nodes/{node}/report` (docs/protocol.md, "Node
//! reports").
//!
//! Invariants:
//! - The boot is never held up by more than [`BUDGET`] in all (connects,
//!   TLS, the posts of earlier reports included), and nothing here fails
//!   the boot: every problem is one warning.
//! - It goes to the server the bundle came from, else to each server the
//!   pipeline tried, in its order; the first that answers takes it. Any
//!   HTTP answer ends it: `201` kept; a plain web server's `404`/`405` is an
//!   info line; anything else (a `403` for a node not enrolled for push, a
//!   `401` from a wrong clock) is a warning; either way the report is
//!   dropped.
//! - When no server answers, the report is kept (unsigned) in
//!   [`PENDING_DIR`] on the cache disk when there is one, else in the run
//!   directory (`/run/stateless/reports/`, where `stateless-node report`
//!   finds it after switch-root), at most [`MAX_PENDING`] of them, the
//!   oldest dropped first. Kept reports go, oldest first, to the next
//!   server that answers, from a later boot's loader or the node agent.
//! - Reports are signed at the moment they are sent, with the push key
//!   derived from the node's key (`stateless_server::push_auth`), so a
//!   kept report carries no proof that could expire or be replayed.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};
use stateless_bundle::{Key, KeyId};
use stateless_keys::usb::Devices;
use stateless_server::push_auth::PushSigner;
use url::Url;

use crate::blockdev::{self, CacheSpec, Mounted};
use crate::cmdline::{CacheDevice, Config, KeyChoice};
use crate::dns::ResolvConf;
use crate::fetch::{Transport, TransportConfig};
use crate::keyladder::{self, KeyPlaces};
use crate::pipeline::{DEFAULT_CA_BUNDLE, Paths, Report};
use crate::probe::{self, CacheDisk};

/// The most time reporting may add to a boot.
pub const BUDGET: Duration = Duration::from_secs(2);
/// Where unsent reports are kept, below the cache disk's root or the run
/// directory.
pub const PENDING_DIR: &str = "reports";
/// Most unsent reports kept; the oldest go first.
pub const MAX_PENDING: usize = 16;
/// Largest kept report read back (the server's default limit).
const MAX_REPORT: u64 = 64 * 1024;

/// What became of this boot's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A server kept it (`201`).
    Sent {
        /// Its base URL.
        server: String,
        /// Earlier kept reports that went with it.
        earlier: usize,
    },
    /// A server answered but did not keep it.
    Refused {
        /// Its base URL.
        server: String,
        /// The status.
        status: u16,
    },
    /// No server answered: kept for later.
    Kept(PathBuf),
    /// Not sent and not kept, and why.
    Skipped(String),
}

/// After the pipeline: probe, add the probe to `status.json`, send the
/// report (and earlier kept ones), or keep it. Never fails; warns.
pub fn after_boot(config: &Config, paths: &Paths, report: &Report) -> Outcome {
    let started = Instant::now();
    let deadline = started + BUDGET;
    let (cache_disk, cache_root, _mounted) = cache_place(config, paths);
    let caps = probe::probe(&paths.host_root, cache_disk);
    let status_path = paths.run_dir.join("status.json");
    let mut status: Value = fs::read(&status_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| serde_json::json!({"result": report.result, "message": report.message}));
    if let (Some(obj), Ok(c)) = (status.as_object_mut(), serde_json::to_value(&caps)) {
        obj.insert("capabilities".into(), c);
    }
    let Ok(body) = serde_json::to_vec_pretty(&status) else {
        return skipped("encoding the report");
    };
    if let Err(e) = write_atomic(&status_path, &body) {
        log::warn!("adding the capability probe to status.json: {e}");
    }
    let pending = cache_root.unwrap_or_else(|| paths.run_dir.clone()).join(PENDING_DIR);
    let Some(node) = report.node.clone().or_else(|| status.get("node").and_then(Value::as_str).map(str::to_owned))
    else {
        return skipped("no node id, so no report");
    };
    if matches!(config.key, KeyChoice::None) {
        // A node without a key has no push key: it cannot report, and
        // saying so on every boot would only be noise.
        log::debug!("boot report not sent: rd.stateless.key=none, so no push key");
        return Outcome::Skipped("no key".into());
    }
    let Some(key) = node_key(config, paths, &status) else {
        return skipped("none of the node's keys was found to sign it with");
    };
    let Ok(signer) = PushSigner::new(&key, &node) else {
        return skipped("deriving the push key");
    };
    let transport = match transport(config, paths) {
        Ok(t) => t,
        Err(e) => return keep(&pending, &body, &format!("no transport: {e}")),
    };
    let bases = bases(report, &status);
    if bases.is_empty() {
        return keep(&pending, &body, "no server was reached on this boot");
    }
    let sender = Sender { transport: &transport, signer: &signer, node: &node, deadline };
    match sender.send_first(&bases, &body) {
        Some((server, 201)) => {
            let earlier = sender.send_pending(&server, &pending);
            log::info!("boot report kept by {server} ({} ms)", started.elapsed().as_millis());
            Outcome::Sent { server, earlier }
        }
        Some((server, status)) => {
            // A plain web server (nginx on the same tree) has no report
            // endpoint: that is a site's choice, not worth a warning on
            // every boot.
            if matches!(status, 404 | 405) {
                log::info!("boot report: {server} does not take reports ({status})");
            } else {
                let why = match status {
                    403 => ": this node is not enrolled for push (statelessctl approve --push-key)",
                    401 => ": the server refused the proof (is the clock right?)",
                    429 => ": too many refused reports from this address",
                    _ => "",
                };
                log::warn!("boot report: {server} answered {status}; not kept{why}");
            }
            // A server answered: earlier reports may still be worth it.
            sender.send_pending(&server, &pending);
            Outcome::Refused { server, status }
        }
        None => keep(&pending, &body, "no server answered"),
    }
}

fn skipped(why: &str) -> Outcome {
    log::warn!("boot report not sent: {why}");
    Outcome::Skipped(why.to_owned())
}

/// Keeps `body` in `dir` for a later boot or the node agent.
fn keep(dir: &Path, body: &[u8], why: &str) -> Outcome {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let path = dir.join(format!("{now:013}-{}.json", std::process::id()));
    let kept = fs::create_dir_all(dir).and_then(|()| write_atomic(&path, body));
    match kept {
        Ok(()) => {
            prune(dir);
            log::warn!("boot report not sent ({why}); kept in {}", path.display());
            Outcome::Kept(path)
        }
        Err(e) => skipped(&format!("{why}; keeping it in {}: {e}", dir.display())),
    }
}

/// Kept reports, oldest first.
pub fn pending(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> =
        rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file()).collect();
    v.sort();
    v
}

fn prune(dir: &Path) {
    let all = pending(dir);
    for p in all.iter().take(all.len().saturating_sub(MAX_PENDING)) {
        let _ = fs::remove_file(p);
    }
}

/// Writes a file atomically: a temporary file beside it, then a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    fs::write(&tmp, bytes)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Posts signed reports within the deadline.
struct Sender<'a> {
    transport: &'a Transport,
    signer: &'a PushSigner,
    node: &'a str,
    deadline: Instant,
}

impl Sender<'_> {
    /// Posts `body` to one base URL: the status, or `None` when it did
    /// not answer.
    fn post(&self, base: &str, body: &[u8]) -> Option<u16> {
        let url = report_url(base, self.node)?;
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let digest: [u8; 32] = Sha256::digest(body).into();
        let auth = self.signer.authorization("POST", url.path(), ts, &digest, body.len() as u64);
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        match self.transport.post(&url, &headers, body, self.deadline) {
            Ok(status) => Some(status),
            Err(e) => {
                log::debug!("boot report to {base}: {e}");
                None
            }
        }
    }

    /// The first base URL that answers, and its status.
    fn send_first(&self, bases: &[String], body: &[u8]) -> Option<(String, u16)> {
        bases.iter().find_map(|b| self.post(b, body).map(|s| (b.clone(), s)))
    }

    /// Sends kept reports, oldest first, to `base`; a report the server
    /// answered (kept or refused) is removed, the rest wait. Returns how
    /// many were kept by the server.
    fn send_pending(&self, base: &str, dir: &Path) -> usize {
        let mut sent = 0;
        for path in pending(dir) {
            let body = match read_bounded(&path) {
                Some(b) => b,
                None => {
                    let _ = fs::remove_file(&path);
                    continue;
                }
            };
            match self.post(base, &body) {
                Some(status) => {
                    if status == 201 {
                        sent += 1;
                    } else {
                        log::warn!("kept boot report {}: {base} answered {status}; dropped", path.display());
                    }
                    let _ = fs::remove_file(&path);
                }
                None => break,
            }
        }
        sent
    }
}

fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut b = Vec::new();
    fs::File::open(path).ok()?.take(MAX_REPORT + 1).read_to_end(&mut b).ok()?;
    (b.len() as u64 <= MAX_REPORT).then_some(b)
}

/// `{base}/v1/nodes/{node}/report`.
pub fn report_url(base: &str, node: &str) -> Option<Url> {
    let base = if base.ends_with('/') { base.to_owned() } else { format!("{base}/") };
    Url::parse(&base).ok()?.join(&format!("v1/nodes/{node}/report")).ok()
}

/// The base of a bundle URL: what precedes `/v1/`.
pub fn base_of(url: &str) -> Option<String> {
    let i = url.find("/v1/")?;
    url.get(..i).map(str::to_owned).filter(|b| b.starts_with("http://") || b.starts_with("https://"))
}

/// The servers to try: the one the bundle came from, then every server the
/// pipeline tried (its `outcomes` and `layers`), each once, in order.
fn bases(report: &Report, status: &Value) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    urls.extend(report.server.clone());
    urls.extend(report.final_url.clone());
    let from = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("from").or_else(|| o.get("server")).or_else(|| o.get("url")))
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    urls.extend(status.get("server").and_then(Value::as_str).map(str::to_owned));
    urls.extend(from(status.get("layers")));
    urls.extend(from(status.get("outcomes")));
    let mut out: Vec<String> = Vec::new();
    for b in urls.iter().filter_map(|u| base_of(u)) {
        if !out.contains(&b) {
            out.push(b);
        }
    }
    out
}

/// The client, trusting what the pipeline trusted.
fn transport(config: &Config, paths: &Paths) -> Result<Transport, crate::fetch::FetchError> {
    let mut dns: Vec<_> = config.dns.into_iter().collect();
    if dns.is_empty() {
        if let Ok(t) = fs::read_to_string(paths.host_root.join("etc/resolv.conf")) {
            dns = ResolvConf::parse(&t).servers;
        }
    }
    let ca = config.ca.clone().or_else(|| {
        let bundle = paths.host_root.join(DEFAULT_CA_BUNDLE);
        (config.pins.is_empty() && bundle.is_file()).then_some(bundle)
    });
    Transport::new(&TransportConfig {
        ca,
        pins: config.pins.iter().map(|p| p.0).collect(),
        dns,
        connect_timeout: Some(BUDGET),
        stall_timeout: Some(BUDGET),
    })
}

/// The node's key, to derive the push key from: the key of the node's
/// layer (or of the applied bundle) as the key ladder finds it, else the
/// only key file embedded in the boot image.
fn node_key(config: &Config, paths: &Paths, status: &Value) -> Option<Key> {
    let mut ids: Vec<String> = Vec::new();
    for layer in status.get("layers").and_then(Value::as_array).into_iter().flatten().rev() {
        let target = layer.get("target").or_else(|| layer.get("scope")).and_then(Value::as_str).unwrap_or("");
        let kind = layer.get("kind").and_then(Value::as_str);
        if target.starts_with("node") || target.starts_with("v1/nodes/") || kind == Some("node") {
            ids.extend(layer.get("key_id").and_then(Value::as_str).map(str::to_owned));
        }
    }
    ids.extend(status.get("key_id").and_then(Value::as_str).map(str::to_owned));
    let usb = if paths.usb_devices.is_empty() {
        Devices::Scan { sys: paths.host_root.join("sys"), dev: paths.host_root.join("dev") }
    } else {
        Devices::List(paths.usb_devices.clone())
    };
    let places = KeyPlaces {
        key_dir: paths.key_dir.clone(),
        sealed_dir: paths.sealed_dir.clone(),
        usb,
        usb_mount: paths.run_dir.join("usb"),
        tpm: config.tpm.clone(),
    };
    for id in ids {
        if let Some(id) = KeyId::from_hex(&id) {
            if let Ok((k, _)) = keyladder::pick_key(&config.key, &places, id) {
                return Some(k);
            }
        }
    }
    let files: Vec<PathBuf> = fs::read_dir(&paths.key_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .take(2)
        .collect();
    match files.as_slice() {
        [one] => stateless_keys::read_key_file(one).ok(),
        _ => None,
    }
}

/// The cache, for the probe and for kept reports: `--cache-dir`, else the
/// `rd.stateless.cache=` device mounted again below the run directory
/// (the pipeline unmounted it; it is unmounted again when the returned
/// guard drops). Without one, `(not found, None, None)`.
fn cache_place(config: &Config, paths: &Paths) -> (CacheDisk, Option<PathBuf>, Option<Mounted>) {
    if let Some(dir) = &paths.cache_dir {
        if dir.is_dir() {
            return (CacheDisk::at(&dir.display().to_string(), dir), Some(dir.clone()), None);
        }
        return (CacheDisk::default(), None, None);
    }
    // The same device names as the pipeline's cache (docs/cmdline.md).
    let spec = match &config.cache {
        CacheDevice::None => return (CacheDisk::default(), None, None),
        CacheDevice::Label(l) => CacheSpec::Label(l.clone()),
        CacheDevice::Uuid(u) => CacheSpec::Uuid(u.clone()),
        CacheDevice::PartLabel(l) => CacheSpec::PartLabel(l.clone()),
        CacheDevice::PartUuid(u) => {
            CacheSpec::Path(PathBuf::from("/dev/disk/by-partuuid").join(u.to_ascii_lowercase()))
        }
        CacheDevice::Path(p) => CacheSpec::Path(p.clone()),
    };
    let Ok(device) = blockdev::find_device(&spec, &paths.host_root.join("dev"), &paths.host_root.join("sys")) else {
        return (CacheDisk::default(), None, None);
    };
    match Mounted::mount(&device, &paths.run_dir.join("cache")) {
        Ok(m) => {
            let root = m.path().to_owned();
            (CacheDisk::at(&device.display().to_string(), &root), Some(root), Some(m))
        }
        Err(e) => {
            log::debug!("cache {} for the boot report: {e}", device.display());
            (CacheDisk { found: true, device: Some(device.display().to_string()), ..CacheDisk::default() }, None, None)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(base_of("http://127.0.0.1:8080/v1/nodes/n1/bundle").as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(base_of("/var/cache/slot/bundle"), None);
        assert_eq!(report_url("http://h:1", "n1").unwrap().as_str(), "http://h:1/v1/nodes/n1/report");
        assert_eq!(report_url("https://h/x/", "n1").unwrap().path(), "/x/v1/nodes/n1/report");
    }

    #[test]
    fn kept_reports_are_bounded() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..(MAX_PENDING + 5) {
            let p = t.path().join(format!("{i:013}-1.json"));
            fs::write(&p, b"{}").unwrap();
            prune(t.path());
        }
        let left = pending(t.path());
        assert_eq!(left.len(), MAX_PENDING);
        assert!(left[0].ends_with(format!("{:013}-1.json", 5)));
    }
}
