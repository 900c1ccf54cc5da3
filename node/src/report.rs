//! `stateless-node report`: after switch-root, send the boot reports the
//! loader kept because no server answered in the initramfs (see the
//! loader's `report` module and docs/node.md, "Boot reports").
//!
//! Each kept file is the report as the loader would have sent it; it is
//! signed now, with the push key derived from the node's key, and posted to
//! `{server}/v1/nodes/{node}/report`, oldest first. A report the server
//! answered (kept, or refused for good) is removed; the first one that
//! finds no server stops the run, and the rest wait for the next.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use stateless_keys::read_key_file;
use stateless_server::push_auth::PushSigner;

use crate::cli::ReportArgs;
use crate::persist::{Settings, agent, first_line, read_config, url_path};

/// Largest kept report read (the server's default limit).
const MAX_REPORT: u64 = 64 * 1024;

/// Kept reports, oldest first (their names start with the time).
fn pending(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut v: Vec<PathBuf> =
        rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file()).collect();
    v.sort();
    Ok(v)
}

/// The base of a bundle URL a report names: what precedes `/v1/`.
fn base_of(url: &str) -> Option<String> {
    url.find("/v1/").and_then(|i| url.get(..i)).map(str::to_owned)
}

/// Sends every kept report; the line printed says how many went.
pub fn run(a: &ReportArgs) -> anyhow::Result<String> {
    let mut s = Settings::default();
    read_config(&a.config, &mut s)?;
    let server = a.server.clone().or(s.server);
    let node_flag = a.node.clone().or(s.node);
    let ca = a.ca.clone().or(s.ca);
    let files = pending(&a.dir)?;
    if files.is_empty() {
        return Ok(format!("no kept reports in {}", a.dir.display()));
    }
    let key_path = a.key.clone().or(s.key).context("no key: give --key or set key = in the config file")?;
    let key = read_key_file(&key_path).context("reading the node's key file")?;
    let (mut sent, mut dropped) = (0, 0);
    for path in files {
        let mut body = Vec::new();
        fs::File::open(&path)
            .and_then(|f| f.take(MAX_REPORT + 1).read_to_end(&mut body))
            .with_context(|| format!("reading {}", path.display()))?;
        let value: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let field = |k: &str| value.as_ref().and_then(|v| v.get(k)).and_then(|v| v.as_str()).map(str::to_owned);
        let (Some(node), true) = (node_flag.clone().or_else(|| field("node")), body.len() as u64 <= MAX_REPORT) else {
            log::warn!("{}: not a report this node can send (no node id, or too large); removed", path.display());
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            dropped += 1;
            continue;
        };
        stateless_server::check_name(&node)?;
        let Some(base) = server.clone().or_else(|| field("server").and_then(|u| base_of(&u))) else {
            bail!("no server: give --server or set server = in the config file");
        };
        let url = format!("{}/v1/nodes/{node}/report", base.trim_end_matches('/'));
        let signer = PushSigner::new(&key, &node).map_err(|e| anyhow::anyhow!("deriving the push key: {e}"))?;
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let digest: [u8; 32] = Sha256::digest(&body).into();
        let auth = signer.authorization("POST", &url_path(&url)?, ts, &digest, body.len() as u64);
        let resp = agent(&url, ca.as_deref())?
            .post(&url)
            .set("Authorization", &auth)
            .set("Content-Type", "application/json")
            .send_bytes(&body);
        match resp {
            Ok(r) if r.status() == 201 => sent += 1,
            Ok(r) => {
                log::warn!("{}: {url} answered {}: {}; removed", path.display(), r.status(), first_line(r));
                dropped += 1;
            }
            Err(ureq::Error::Status(code, r)) => {
                log::warn!("{}: {url} answered {code}: {}; removed", path.display(), first_line(r));
                dropped += 1;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("sending {} to {url} ({sent} sent before)", path.display()));
            }
        }
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(format!(
        "sent {sent} kept report(s){}",
        if dropped > 0 { format!(", dropped {dropped}") } else { String::new() }
    ))
}
